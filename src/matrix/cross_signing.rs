//! The device's crypto identity: cross-signing set up at login, while the one-time password is
//! still known, so that Element clients see a verified device and send it media keys (MSC4153
//! "exclude insecure devices").
//!
//! Owns only the bootstrap requests (through matrix-sdk, whose sqlite store keeps the private
//! keys); it never stores or logs the password.

use matrix_sdk::ruma::api::client::uiaa::{
    AuthData, MatrixUserIdentifier, Password, UserIdentifier,
};
use matrix_sdk::Client;
use tracing::{info, warn};

use crate::secret::Secret;

/// Makes sure the account has a cross-signing identity that signs this device: creates one if
/// there is none, and replaces one whose private keys this device does not hold (the device
/// account belongs to the intercom; a new login is a new device with a fresh store). User-
/// interactive auth is answered with the password. Failures are logged, not fatal: calls still
/// work with clients that accept keys from unverified devices.
pub(super) async fn bootstrap(client: &Client, user_id: &str, password: &Secret) {
    match try_bootstrap(client, user_id, password).await {
        Ok(true) => info!("cross-signing set up: this device is signed by the account"),
        Ok(false) => {}
        Err(e) => warn!(
            "could not set up cross-signing ({e}); Element clients may show this device as unverified and refuse to send it media keys"
        ),
    }
}

async fn try_bootstrap(
    client: &Client,
    user_id: &str,
    password: &Secret,
) -> Result<bool, matrix_sdk::Error> {
    let enc = client.encryption();
    if let Some(status) = enc.cross_signing_status().await {
        if status.is_complete() {
            return Ok(false);
        }
    }
    let auth = |session: Option<String>| {
        let localpart = user_id
            .strip_prefix('@')
            .and_then(|u| u.split(':').next())
            .unwrap_or(user_id);
        let mut pw = Password::new(
            UserIdentifier::Matrix(MatrixUserIdentifier::new(localpart.to_owned())),
            password.expose().to_owned(),
        );
        pw.session = session;
        AuthData::Password(pw)
    };
    let has_identity = {
        let own = client.user_id().map(ToOwned::to_owned);
        match own {
            Some(u) => {
                // A fresh device knows nothing yet: ask the server.
                enc.request_user_identity(&u).await?.is_some()
            }
            None => false,
        }
    };
    if has_identity {
        warn!("the account has a cross-signing identity this device cannot use; replacing it (Element shows an identity change for this account once)");
        if let Some(handle) = enc.reset_cross_signing().await? {
            let session = match handle.auth_type() {
                matrix_sdk::encryption::CrossSigningResetAuthType::Uiaa(info) => {
                    info.session.clone()
                }
                matrix_sdk::encryption::CrossSigningResetAuthType::OAuth(_) => {
                    handle.cancel().await;
                    warn!("the homeserver wants an OAuth approval to replace the cross-signing identity; verify this device from Element instead");
                    return Ok(false);
                }
            };
            handle.auth(Some(auth(session))).await?;
        }
        return Ok(true);
    }
    match enc.bootstrap_cross_signing(None).await {
        Ok(()) => Ok(true),
        Err(e) => match e.as_uiaa_response() {
            Some(uiaa) => {
                let session = uiaa.session.clone();
                enc.bootstrap_cross_signing(Some(auth(session))).await?;
                Ok(true)
            }
            None => Err(e),
        },
    }
}
