//! The Matrix side: stored session, login/logout, sync, who is in the room's call, the
//! device's MatrixRTC membership and the LiveKit token service (issue [matrix]).
//!
//! Owns everything that talks to the homeserver and the token service. It does not decide
//! what the device does (that is the call machine's job: it gets [`MatrixEvent`]s and calls
//! [`MatrixSide::join`]/[`MatrixSide::leave`]) and never touches media, audio or GPIO.
//! Secrets (tokens, JWTs, delay ids) are held in [`Secret`]s and never logged.

pub mod error;
mod http;
mod manager;
pub mod members;
pub mod membership;
pub mod session;
mod sync;
pub mod token;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomOrAliasId, OwnedUserId, RoomAliasId, RoomId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room, RoomState, SessionChange, SessionMeta, SessionTokens};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use error::{MatrixError, ServerRefusal, SessionError};
pub use members::CallMember;
pub use session::{session_exists, StoredSession};
pub use token::RtcGrant;

use crate::config::Config;
use crate::secret::Secret;
use http::Http;
use manager::{ActiveMembership, MembershipCtx};
use membership::MembershipParams;

/// What the Matrix side reports to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatrixEvent {
    /// Another device's call membership appeared.
    MemberJoined { user_id: String, device_id: String },
    /// Another device's call membership went away (left, expired, or its user left the room).
    MemberLeft { user_id: String, device_id: String },
    /// The last other member left while the device is in the call.
    CallEnded,
    /// A call started in the room while the device is not in it.
    IncomingCall,
    /// That call ended before the device joined.
    IncomingCallGone,
    /// The access token is no longer accepted and cannot be refreshed.
    TokenError { reason: String },
    /// Sync with the homeserver failed; retrying with backoff.
    ConnectionLost,
    /// Sync works again.
    ConnectionBack,
    /// Someone asked to open the door: a message "open" or a 🔑 reaction. The allow-list
    /// check is the daemon's.
    DoorOpenRequest { user_id: String },
}

/// How many times a failing request is retried inside matrix-sdk (429 honours
/// `retry_after_ms`; 5xx and network errors back off exponentially).
const SDK_RETRIES: usize = 4;
const EVENT_QUEUE: usize = 64;
/// Attempts of one [`MatrixSide::rtc_grant`].
const GRANT_ATTEMPTS: u32 = 3;

/// The device's Matrix client and its call state.
pub struct MatrixSide {
    client: Client,
    room: Room,
    http: Http,
    homeserver: String,
    user_id: String,
    device_id: String,
    service_url_override: Option<String>,
    token_endpoint: crate::config::TokenEndpoint,
    members: watch::Receiver<Vec<CallMember>>,
    joined: Arc<AtomicBool>,
    active: Mutex<Option<ActiveMembership>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MatrixSide {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn ca_pem(cfg: &Config) -> Result<Option<Vec<u8>>, MatrixError> {
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

async fn restore(cfg: &Config, stored: &StoredSession) -> Result<Client, MatrixError> {
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

async fn login(cfg: &Config, password: &str) -> Result<(Client, StoredSession), MatrixError> {
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
fn watch_session(client: &Client, cfg: &Config, homeserver: String) -> JoinHandle<()> {
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

impl MatrixSide {
    /// Restores the stored session (or logs in once with `matrix.password`), syncs, finds the
    /// room (joining it if the device was invited) and starts the sync loop.
    pub async fn start(cfg: &Config) -> Result<(Self, mpsc::Receiver<MatrixEvent>), MatrixError> {
        let state_dir = &cfg.matrix.state_dir;
        let (client, stored) = match session::load(state_dir)? {
            Some(stored) => (restore(cfg, &stored).await?, stored),
            None => match &cfg.matrix.password {
                Some(pw) => login(cfg, pw).await?,
                None => return Err(MatrixError::NotLoggedIn),
            },
        };
        info!(device_id = %stored.device_id, "Matrix session ready");
        let homeserver = stored.homeserver.clone();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let session_task = watch_session(&client, cfg, homeserver.clone());

        let first = client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await
            .map_err(|e| MatrixError::from_sdk("the first sync", &homeserver, &e))?;
        let room = find_room(&client, &cfg.matrix.room, &homeserver).await?;

        let (members_tx, members_rx) = watch::channel(Vec::new());
        let joined = Arc::new(AtomicBool::new(false));
        let sync = sync::SyncLoop {
            client: client.clone(),
            room: room.clone(),
            homeserver: homeserver.clone(),
            own_user: stored.user_id.clone(),
            own_device: stored.device_id.clone(),
            events: tx,
            members: members_tx,
            joined: joined.clone(),
        };
        let sync_task = tokio::spawn(sync.run(first.next_batch));
        let http =
            Http::new(ca_pem(cfg)?.as_deref()).map_err(|reason| MatrixError::InvalidConfig {
                what: "tls.ca_file",
                value: format!("{:?}", cfg.tls.ca_file),
                reason,
            })?;
        Ok((
            Self {
                client,
                room,
                http,
                homeserver,
                user_id: stored.user_id,
                device_id: stored.device_id,
                service_url_override: cfg.livekit.service_url.clone(),
                token_endpoint: cfg.livekit.token_endpoint,
                members: members_rx,
                joined,
                active: Mutex::new(None),
                tasks: vec![session_task, sync_task],
            },
            rx,
        ))
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn room_id(&self) -> &str {
        self.room.room_id().as_str()
    }

    /// The LiveKit identity of this device (`@user:server:DEVICE`).
    pub fn rtc_identity(&self) -> String {
        membership::rtc_identity(&self.user_id, &self.device_id)
    }

    /// Valid call members (including this device once joined), oldest first.
    pub fn members(&self) -> Vec<CallMember> {
        self.members.borrow().clone()
    }

    /// Whether the room has `m.room.encryption` (then media must be end-to-end encrypted).
    pub async fn room_is_encrypted(&self) -> bool {
        self.room
            .latest_encryption_state()
            .await
            .map(|s| s.is_encrypted())
            .unwrap_or(false)
    }

    async fn service_url(&self) -> Result<String, MatrixError> {
        let token = self
            .client
            .access_token()
            .map(Secret::new)
            .ok_or(MatrixError::NotLoggedIn)?;
        transport::discover(
            &self.http,
            &self.homeserver,
            &self.user_id,
            &token,
            self.service_url_override.as_deref(),
        )
        .await
    }

    /// A fresh LiveKit grant: new OpenID token, then the token service. Transient failures
    /// (unreachable, 429 with its `retry_after_ms`, 5xx) are retried a few times with backoff;
    /// the last error carries the server's errcode and words.
    pub async fn rtc_grant(&self) -> Result<RtcGrant, MatrixError> {
        let service = self.service_url().await?;
        let mut attempt = 0u32;
        loop {
            match self.try_grant(&service).await {
                Ok(g) => return Ok(g),
                Err(e) if e.is_transient() && attempt + 1 < GRANT_ATTEMPTS => {
                    let retry_after = match &e {
                        MatrixError::TokenService { refusal, .. }
                        | MatrixError::Homeserver { refusal, .. } => refusal.retry_after,
                        _ => None,
                    };
                    let wait = retry_after
                        .unwrap_or(Duration::from_millis(500 << attempt))
                        .min(Duration::from_secs(10));
                    warn!(?wait, "getting a LiveKit token failed, retrying: {e}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_grant(&self, service: &str) -> Result<RtcGrant, MatrixError> {
        let openid = self
            .client
            .account()
            .request_openid_token()
            .await
            .map_err(|e| MatrixError::from_sdk("the OpenID token", &self.homeserver, &e))?;
        let openid = token::OpenIdToken {
            access_token: Secret::new(openid.access_token),
            token_type: openid.token_type.to_string(),
            matrix_server_name: openid.matrix_server_name.to_string(),
            expires_in_s: openid.expires_in.as_secs(),
        };
        // The member id is the membership's `membershipID`, so `/get_token` identities can be
        // mapped back to the membership.
        let member_id = self.rtc_identity();
        let req = token::GrantRequest {
            service,
            endpoint: self.token_endpoint,
            room_id: self.room_id(),
            user_id: &self.user_id,
            device_id: &self.device_id,
            member_id: &member_id,
        };
        token::request_grant(&self.http, &req, &openid).await
    }

    /// Joins the room's call: delayed leave, membership, keep-alive; rings if first.
    /// Joining twice is a no-op.
    pub async fn join(&self) -> Result<(), MatrixError> {
        let mut active = self.active.lock().await;
        if active.is_some() {
            return Ok(());
        }
        let ctx = Arc::new(MembershipCtx {
            client: self.client.clone(),
            room: self.room.clone(),
            http: self.http.clone(),
            homeserver: self.homeserver.clone(),
            params: MembershipParams {
                user_id: self.user_id.clone(),
                device_id: self.device_id.clone(),
                room_id: self.room_id().to_owned(),
                livekit_service_url: self.service_url().await?,
            },
        });
        self.joined.store(true, Ordering::SeqCst);
        match manager::join(ctx, self.members.clone()).await {
            Ok(m) => {
                *active = Some(m);
                Ok(())
            }
            Err(e) => {
                self.joined.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Leaves the call (sends the delayed leave now; falls back to putting `{}`).
    pub async fn leave(&self) -> Result<(), MatrixError> {
        let Some(m) = self.active.lock().await.take() else {
            return Err(MatrixError::NotJoined);
        };
        self.joined.store(false, Ordering::SeqCst);
        m.leave().await
    }

    /// The event id of the device's current membership, while joined.
    pub async fn membership_event_id(&self) -> Option<String> {
        self.active
            .lock()
            .await
            .as_ref()
            .map(|m| m.membership_event_id.clone())
    }
}

async fn find_room(client: &Client, room: &str, homeserver: &str) -> Result<Room, MatrixError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// The daemon shares the side across tasks and spawns its futures.
    #[test]
    fn side_and_its_futures_can_cross_tasks() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<MatrixSide>();
        #[allow(dead_code)] // only type-checked, never called
        fn futures(side: &'static MatrixSide, cfg: &'static Config) {
            is_send(&MatrixSide::start(cfg));
            is_send(&side.join());
            is_send(&side.leave());
            is_send(&side.rtc_grant());
            is_send(&login_interactive(cfg, "pw"));
            is_send(&logout(cfg));
        }
    }
}
