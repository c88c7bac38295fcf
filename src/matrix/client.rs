//! The Matrix client and the account session: building the matrix-sdk client (sqlite store,
//! request retries, TLS), login with the password once, restoring the stored session, logout,
//! persisting refreshed tokens, and finding the configured room.
//!
//! Owns the session file's life cycle through [`super::session`]; it does not sync, join calls
//! or talk to the token service.

use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomOrAliasId, OwnedUserId, RoomAliasId, RoomId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room, RoomState, SessionChange, SessionMeta, SessionTokens};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::{MatrixError, SessionError};
use super::session::{self, StoredSession};
use crate::config::Config;
use crate::secret::Secret;

/// How many times a failing request is retried inside matrix-sdk (429 honours
/// `retry_after_ms`; 5xx and network errors back off exponentially).
const SDK_RETRIES: usize = 4;

pub(super) fn ca_pem(cfg: &Config) -> Result<Option<Vec<u8>>, MatrixError> {
    match &cfg.tls.ca_file {
        None => Ok(None),
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| MatrixError::InvalidConfig {
                what: "tls.ca_file",
                value: path.display().to_string(),
                reason: e.to_string(),
            }),
    }
}

async fn build_client(cfg: &Config, homeserver: &str) -> Result<Client, MatrixError> {
    let state_dir = &cfg.matrix.state_dir;
    session::ensure_state_dir(state_dir)?;
    let mut builder = Client::builder()
        .homeserver_url(homeserver)
        .sqlite_store(session::store_path(state_dir), None)
        .request_config(
            RequestConfig::new()
                .retry_limit(SDK_RETRIES)
                .max_retry_time(Duration::from_secs(30))
                .timeout(Duration::from_secs(30)),
        )
        .handle_refresh_tokens()
        // The configured homeserver URL is authoritative (a login answer may name another).
        .respect_login_well_known(false);
    if let Some(pem) = ca_pem(cfg)? {
        let certs = matrix_sdk::reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            MatrixError::InvalidConfig {
                what: "tls.ca_file",
                value: format!("{:?}", cfg.tls.ca_file),
                reason: e.to_string(),
            }
        })?;
        builder = builder.add_root_certificates(certs);
    }
    builder
        .build()
        .await
        .map_err(|e| MatrixError::InvalidConfig {
            what: "matrix.homeserver",
            value: homeserver.to_owned(),
            reason: e.to_string(),
        })
}

fn stored_from_client(client: &Client, homeserver: &str) -> Option<StoredSession> {
    let s = client.matrix_auth().session()?;
    Some(StoredSession {
        homeserver: homeserver.to_owned(),
        user_id: s.meta.user_id.to_string(),
        device_id: s.meta.device_id.to_string(),
        access_token: Secret::new(s.tokens.access_token),
        refresh_token: s.tokens.refresh_token.map(Secret::new),
    })
}

fn parse_user(cfg: &Config) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(cfg.matrix.user_id.as_str()).map_err(|e| MatrixError::InvalidConfig {
        what: "matrix.user_id",
        value: cfg.matrix.user_id.clone(),
        reason: e.to_string(),
    })
}

pub(super) async fn restore(cfg: &Config, stored: &StoredSession) -> Result<Client, MatrixError> {
    if stored.user_id != cfg.matrix.user_id {
        return Err(SessionError::WrongUser {
            path: session::session_path(&cfg.matrix.state_dir),
            found: stored.user_id.clone(),
            expected: cfg.matrix.user_id.clone(),
        }
        .into());
    }
    let client = build_client(cfg, &stored.homeserver).await?;
    let session = MatrixSession {
        meta: SessionMeta {
            user_id: parse_user(cfg)?,
            device_id: OwnedDeviceId::from(stored.device_id.as_str()),
        },
        tokens: SessionTokens {
            access_token: stored.access_token.expose().to_owned(),
            refresh_token: stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        },
    };
    client
        .matrix_auth()
        .restore_session(session, RoomLoadSettings::default())
        .await
        .map_err(|e| MatrixError::Sdk(format!("restoring the session: {e}")))?;
    Ok(client)
}

/// Logs in with the password once, creating a new device, and stores the session. An older
/// session in the state directory is logged out first (best effort, so its device does not
/// linger on the account); its file and store are replaced.
pub async fn login_interactive(cfg: &Config, password: &str) -> Result<StoredSession, MatrixError> {
    if session::session_exists(&cfg.matrix.state_dir) {
        if let Err(e) = logout(cfg).await {
            warn!("could not log out the previous session ({e}); logging in anyway");
        }
    }
    let (_client, stored) = login(cfg, password).await?;
    Ok(stored)
}

pub(super) async fn login(
    cfg: &Config,
    password: &str,
) -> Result<(Client, StoredSession), MatrixError> {
    let state_dir = &cfg.matrix.state_dir;
    let homeserver = cfg.matrix.homeserver.trim_end_matches('/').to_owned();
    let user = parse_user(cfg)?;
    // A new device must not meet the previous device's crypto store.
    session::remove_store(state_dir)?;
    let client = build_client(cfg, &homeserver).await?;
    client
        .matrix_auth()
        .login_username(&user, password)
        .initial_device_display_name(&cfg.matrix.device_name)
        .request_refresh_token()
        .send()
        .await
        .map_err(
            |e| match MatrixError::from_sdk("the login", &homeserver, &e) {
                MatrixError::Homeserver { refusal, .. } => MatrixError::Login(refusal.to_string()),
                MatrixError::TokenRevoked(m) => MatrixError::Login(m),
                other => other,
            },
        )?;
    let stored = stored_from_client(&client, &homeserver)
        .ok_or_else(|| MatrixError::Login("the homeserver returned no session".into()))?;
    session::save(state_dir, &stored)?;
    info!(device_id = %stored.device_id, "logged in; session stored");
    // Only now is the password at hand: the one-time login is when the device gets signed.
    super::cross_signing::bootstrap(&client, &stored.user_id, &Secret::new(password)).await;
    Ok((client, stored))
}

/// Revokes the stored session's access token and deletes the session file and store. A token
/// the server no longer knows counts as revoked.
pub async fn logout(cfg: &Config) -> Result<(), MatrixError> {
    let state_dir = &cfg.matrix.state_dir;
    let Some(stored) = session::load(state_dir)? else {
        return Ok(());
    };
    let client = restore(cfg, &stored).await?;
    match client.matrix_auth().logout().await {
        Ok(_) => {}
        Err(e) => match MatrixError::from_http("the logout", &stored.homeserver, &e) {
            MatrixError::TokenRevoked(_) => {}
            other => return Err(other),
        },
    }
    drop(client);
    session::remove(state_dir)?;
    info!("logged out; session deleted");
    Ok(())
}

/// Saves refreshed tokens to the session file.
pub(super) fn watch_session(client: &Client, cfg: &Config, homeserver: String) -> JoinHandle<()> {
    let mut changes = client.subscribe_to_session_changes();
    let client = client.clone();
    let state_dir = cfg.matrix.state_dir.clone();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(SessionChange::TokensRefreshed) => {
                    if let Some(stored) = stored_from_client(&client, &homeserver) {
                        if let Err(e) = session::save(&state_dir, &stored) {
                            warn!("could not store the refreshed tokens: {e}");
                        } else {
                            info!("access token refreshed and stored");
                        }
                    }
                }
                // Reported by the sync loop, which retries with backoff.
                Ok(SessionChange::UnknownToken(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

pub(super) async fn find_room(
    client: &Client,
    room: &str,
    homeserver: &str,
) -> Result<Room, MatrixError> {
    let invalid = |reason: String| MatrixError::InvalidConfig {
        what: "matrix.room",
        value: room.to_owned(),
        reason,
    };
    let id: OwnedRoomOrAliasId = room
        .try_into()
        .map_err(|e: matrix_sdk::IdParseError| invalid(e.to_string()))?;
    let room_id = if id.is_room_alias_id() {
        let alias: &RoomAliasId = id
            .as_str()
            .try_into()
            .map_err(|e: matrix_sdk::IdParseError| invalid(e.to_string()))?;
        client
            .resolve_room_alias(alias)
            .await
            .map_err(|e| MatrixError::from_http("resolving the room alias", homeserver, &e))?
            .room_id
    } else {
        <&RoomId>::try_from(id.as_str())
            .map_err(|e| invalid(e.to_string()))?
            .to_owned()
    };
    let not_in_room = || MatrixError::NotInRoom {
        room: room.to_owned(),
    };
    let r = client.get_room(&room_id).ok_or_else(not_in_room)?;
    match r.state() {
        RoomState::Joined => Ok(r),
        RoomState::Invited => {
            info!("accepting the invitation to the configured room");
            r.join()
                .await
                .map_err(|e| MatrixError::from_sdk("joining the room", homeserver, &e))?;
            client.get_room(&room_id).ok_or_else(not_in_room)
        }
        _ => Err(not_in_room()),
    }
}
