//! The Matrix side: stored session, login/logout, sync, who is in the room's call, the
//! device's MatrixRTC membership and the LiveKit token service (issue `[matrix]`).
//!
//! Owns everything that talks to the homeserver and the token service. It does not decide
//! what the device does (that is the call machine's job: it gets [`MatrixEvent`]s and calls
//! [`MatrixSide::join`]/[`MatrixSide::leave`]) and never touches media, audio or GPIO.
//! Secrets (tokens, JWTs, delay ids) are held in [`Secret`]s and never logged.
//!
//! Use from the daemon:
//! - [`MatrixSide::start`] restores `<state_dir>/session.json` (or logs in once with
//!   `matrix.password`), does a first sync (so it needs the homeserver: on an error with
//!   [`MatrixError::is_transient`] retry with backoff), resolves the room and starts syncing.
//!   The receiver yields [`MatrixEvent`]s for the call machine.
//! - Button pressed: [`MatrixSide::join`] (delayed leave, membership, keep-alive, ring when
//!   first), then [`MatrixSide::rtc_grant`] for the media side (a fresh JWT per connect).
//! - [`MatrixSide::leave`] when the call is over. Dropping the side without leaving is a crash
//!   as far as the room is concerned: the membership disappears ~10 s later.
//! - Encrypted room: [`MatrixSide::start_media_keys`] before joining; the media keys arrive as
//!   [`MediaKeyUpdate`]s (Element Call per-participant keys over Olm to-device messages).
//! - CLI: [`login_interactive`], [`logout`], [`session_exists`].

mod client;
mod cross_signing;
pub mod error;
mod http;
mod key_exchange;
pub mod key_message;
mod manager;
pub mod media_keys;
pub mod members;
pub mod membership;
pub mod session;
mod sync;
pub mod token;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::{Client, Room};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use client::{login_interactive, logout};
pub use error::{MatrixError, ServerRefusal, SessionError};
pub use key_exchange::MediaKeyUpdate;
pub use members::CallMember;
pub use session::{session_exists, StoredSession};
pub use token::RtcGrant;

use crate::config::Config;
use crate::secret::Secret;
use client::{ca_pem, find_room, login, restore, watch_session};
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
    key_inbox: sync::KeyInbox,
    key_task: Mutex<Option<JoinHandle<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MatrixSide {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut t) = self.key_task.try_lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
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
        let key_inbox = sync::KeyInbox::default();
        let sync = sync::SyncLoop {
            client: client.clone(),
            room: room.clone(),
            homeserver: homeserver.clone(),
            own_user: stored.user_id.clone(),
            own_device: stored.device_id.clone(),
            events: tx,
            members: members_tx,
            joined: joined.clone(),
            key_inbox: key_inbox.clone(),
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
                key_inbox,
                key_task: Mutex::new(None),
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

    /// Starts the media key exchange of the room's call (Element Call's per-participant keys
    /// over Olm; for encrypted rooms, before [`Self::join`] so no key sent to us is missed).
    /// Our key and the other members' keys arrive on the receiver until [`Self::leave`];
    /// starting again restarts it with a new key.
    pub async fn start_media_keys(&self) -> mpsc::Receiver<MediaKeyUpdate> {
        self.stop_media_keys().await;
        let (inbox_tx, inbox) = mpsc::channel(key_exchange::INBOX);
        let (updates, rx) = mpsc::channel(key_exchange::INBOX);
        if let Ok(mut i) = self.key_inbox.lock() {
            *i = Some(inbox_tx);
        }
        let task = key_exchange::KeyDriver {
            client: self.client.clone(),
            room_id: self.room_id().to_owned(),
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            members: self.members.clone(),
            inbox,
            updates,
        }
        .spawn();
        *self.key_task.lock().await = Some(task);
        rx
    }

    async fn stop_media_keys(&self) {
        if let Ok(mut i) = self.key_inbox.lock() {
            *i = None;
        }
        if let Some(t) = self.key_task.lock().await.take() {
            t.abort();
        }
    }

    /// Leaves the call (sends the delayed leave now; falls back to putting `{}`) and stops the
    /// media key exchange.
    pub async fn leave(&self) -> Result<(), MatrixError> {
        self.stop_media_keys().await;
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
