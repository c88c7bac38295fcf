//! The MatrixRTC membership manager: delayed leave, membership, keep-alive, re-join, hourly
//! refresh, ring, leave (matrix-js-sdk `MembershipManager` behaviour, MSC4140 delayed events).
//!
//! Owns the device's own `org.matrix.msc3401.call.member` state and its delayed leave. Delay ids
//! are capabilities: they stay in [`Secret`]s and their requests go through [`Http`], never
//! through the SDK's request logging. Reads who is in the call from the sync loop's watch
//! channel; does not touch LiveKit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_sdk::reqwest::Method;
use matrix_sdk::{Client, Room};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::error::MatrixError;
use super::http::{build_url, Http, HttpFailure};
use super::members::CallMember;
use super::membership::{
    leave_content, membership_content, refresh_due, ring_content, state_key, MembershipParams,
    CALL_MEMBER_TYPE, DELAYED_LEAVE, KEEPALIVE_INTERVAL, MEMBERSHIP_EXPIRES_MS, RESTART_TIMEOUT,
    RING_TYPE,
};
use crate::secret::Secret;

const DELAYED_EVENTS: &str = "_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// What the manager needs from the rest of the Matrix side.
pub(crate) struct MembershipCtx {
    pub client: Client,
    pub room: Room,
    pub http: Http,
    pub homeserver: String,
    pub params: MembershipParams,
}

impl MembershipCtx {
    fn state_key(&self) -> String {
        state_key(&self.params.user_id, &self.params.device_id)
    }

    fn is_own(&self, m: &CallMember) -> bool {
        m.user_id == self.params.user_id && m.device_id == self.params.device_id
    }

    fn access_token(&self) -> Result<Secret, MatrixError> {
        self.client
            .access_token()
            .map(Secret::new)
            .ok_or(MatrixError::NotLoggedIn)
    }

    fn url(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<matrix_sdk::reqwest::Url, MatrixError> {
        build_url(&self.homeserver, segments, query).map_err(|reason| MatrixError::InvalidConfig {
            what: "matrix.homeserver",
            value: self.homeserver.clone(),
            reason,
        })
    }

    fn hs_error(&self, action: &'static str, f: HttpFailure) -> MatrixError {
        match f {
            HttpFailure::Unreachable(reason) => MatrixError::Unreachable {
                homeserver: self.homeserver.clone(),
                reason,
            },
            HttpFailure::Refused(refusal) => MatrixError::Homeserver { action, refusal },
            HttpFailure::Garbage(reason) => MatrixError::Sdk(format!("{action}: {reason}")),
        }
    }

    /// Schedules `{}` for our state key after [`DELAYED_LEAVE`]. `Ok(None)` when the server
    /// has no delayed events (the membership then relies on `expires` alone).
    async fn schedule_delayed_leave(&self) -> Result<Option<Secret>, MatrixError> {
        let token = self.access_token()?;
        let key = self.state_key();
        let mut delay_ms = DELAYED_LEAVE.as_millis() as u64;
        for attempt in 0..4 {
            let delay = delay_ms.to_string();
            let url = self.url(
                &[
                    "_matrix/client/v3/rooms",
                    &self.params.room_id,
                    "state",
                    CALL_MEMBER_TYPE,
                    &key,
                ],
                &[("org.matrix.msc4140.delay", &delay)],
            )?;
            match self
                .http
                .json(Method::PUT, url, Some(&token), Some(&leave_content()), None)
                .await
            {
                Ok(doc) => {
                    return match doc.get("delay_id").and_then(Value::as_str) {
                        Some(id) => Ok(Some(Secret::new(id))),
                        None => {
                            // The server ignored the delay and set the state at once: it has no
                            // MSC4140. Our membership is sent right after, so no harm done.
                            warn!("the homeserver does not support delayed events (MSC4140); a crash will leave a stale call membership until it expires");
                            Ok(None)
                        }
                    };
                }
                Err(HttpFailure::Refused(r)) if r.is_max_delay_exceeded() => {
                    let max = r.max_delay_ms.unwrap_or(delay_ms / 2).max(1000);
                    warn!(
                        asked_ms = delay_ms,
                        max_ms = max,
                        "delayed leave above the server's limit; retrying shorter"
                    );
                    if max >= delay_ms {
                        return Err(MatrixError::Homeserver {
                            action: "the delayed leave",
                            refusal: r,
                        });
                    }
                    delay_ms = max;
                }
                Err(HttpFailure::Refused(r)) if r.status == 429 && attempt < 3 => {
                    let wait = r
                        .retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .min(Duration::from_secs(30));
                    warn!(?wait, "rate limited scheduling the delayed leave");
                    tokio::time::sleep(wait).await;
                }
                Err(HttpFailure::Refused(r)) if r.is("M_FORBIDDEN") => {
                    return Err(MatrixError::NoCallPermission {
                        room: self.params.room_id.clone(),
                        refusal: r,
                    });
                }
                Err(HttpFailure::Refused(r)) if r.is("M_UNRECOGNIZED") => {
                    warn!("the homeserver does not support delayed events (MSC4140): {r}");
                    return Ok(None);
                }
                Err(e) => return Err(self.hs_error("the delayed leave", e)),
            }
        }
        Err(MatrixError::Sdk(
            "could not schedule the delayed leave".into(),
        ))
    }

    /// Restarts the delayed leave. `Ok(false)` if the server forgot it (404 `M_NOT_FOUND`).
    async fn restart(&self, delay_id: &Secret) -> Result<bool, MatrixError> {
        let url = self.url(&[DELAYED_EVENTS, delay_id.expose(), "restart"], &[])?;
        let r = self
            .http
            .json(
                Method::POST,
                url,
                None,
                Some(&json!({})),
                Some(RESTART_TIMEOUT),
            )
            .await;
        let r = match r {
            Err(HttpFailure::Refused(r))
                if r.is("M_UNRECOGNIZED") || (r.status == 404 && !r.is("M_NOT_FOUND")) =>
            {
                let url = self.url(&[DELAYED_EVENTS, delay_id.expose()], &[])?;
                self.http
                    .json(
                        Method::POST,
                        url,
                        None,
                        Some(&json!({"action": "restart"})),
                        Some(RESTART_TIMEOUT),
                    )
                    .await
            }
            other => other,
        };
        match r {
            Ok(_) => Ok(true),
            Err(HttpFailure::Refused(r)) if r.is("M_NOT_FOUND") => Ok(false),
            Err(e) => Err(self.hs_error("restarting the delayed leave", e)),
        }
    }

    /// Sends the delayed leave now.
    async fn send_delayed(&self, delay_id: &Secret) -> Result<(), HttpFailure> {
        let url = self
            .url(&[DELAYED_EVENTS, delay_id.expose(), "send"], &[])
            .map_err(|e| HttpFailure::Garbage(e.to_string()))?;
        let r = self
            .http
            .json(
                Method::POST,
                url,
                None,
                Some(&json!({})),
                Some(Duration::from_secs(5)),
            )
            .await;
        match r {
            Err(HttpFailure::Refused(r))
                if r.is("M_UNRECOGNIZED") || (r.status == 404 && !r.is("M_NOT_FOUND")) =>
            {
                let url = self
                    .url(&[DELAYED_EVENTS, delay_id.expose()], &[])
                    .map_err(|e| HttpFailure::Garbage(e.to_string()))?;
                self.http
                    .json(
                        Method::POST,
                        url,
                        None,
                        Some(&json!({"action": "send"})),
                        Some(Duration::from_secs(5)),
                    )
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Sends our membership; returns its event id.
    async fn send_membership(
        &self,
        created_ts: Option<u64>,
        expires_ms: u64,
    ) -> Result<String, MatrixError> {
        let content = membership_content(&self.params, created_ts, expires_ms);
        let resp = self
            .room
            .send_state_event_raw(CALL_MEMBER_TYPE, &self.state_key(), content)
            .await
            .map_err(|e| {
                match MatrixError::from_sdk("the call membership", &self.homeserver, &e) {
                    MatrixError::Homeserver { refusal, .. } if refusal.is("M_FORBIDDEN") => {
                        MatrixError::NoCallPermission {
                            room: self.params.room_id.clone(),
                            refusal,
                        }
                    }
                    other => other,
                }
            })?;
        Ok(resp.event_id.to_string())
    }

    async fn send_leave_state(&self) -> Result<(), MatrixError> {
        self.room
            .send_state_event_raw(CALL_MEMBER_TYPE, &self.state_key(), leave_content())
            .await
            .map_err(|e| MatrixError::from_sdk("leaving the call", &self.homeserver, &e))?;
        Ok(())
    }

    async fn ring(&self, membership_event_id: &str) -> Result<(), MatrixError> {
        let content = ring_content(membership_event_id, now_ms());
        self.room
            .send_raw(RING_TYPE, content)
            .await
            .map_err(|e| MatrixError::from_sdk("the ring notification", &self.homeserver, &e))?;
        Ok(())
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
struct KeepState {
    delay_id: Option<Secret>,
    /// When the current membership was first sent (for the hourly refresh).
    started: Instant,
    refreshes: u64,
    /// `created_ts ?? origin_server_ts` of the first membership event, once seen in sync.
    created_ts: Option<u64>,
    /// Our membership was seen in room state since it was last sent.
    seen: bool,
}

/// A joined call: dropping it without [`ActiveMembership::leave`] stops the keep-alive, so the
/// server sends the delayed leave [`DELAYED_LEAVE`] later (what happens on a crash).
pub(crate) struct ActiveMembership {
    ctx: Arc<MembershipCtx>,
    state: Arc<Mutex<KeepState>>,
    task: JoinHandle<()>,
    pub membership_event_id: String,
}

impl Drop for ActiveMembership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joins: delayed leave first, then the membership, then the keep-alive; rings the room if
/// nobody else is in the call.
pub(crate) async fn join(
    ctx: Arc<MembershipCtx>,
    members: watch::Receiver<Vec<CallMember>>,
) -> Result<ActiveMembership, MatrixError> {
    let first = !members.borrow().iter().any(|m| !ctx.is_own(m));
    let delay_id = ctx.schedule_delayed_leave().await?;
    let event_id = ctx.send_membership(None, MEMBERSHIP_EXPIRES_MS).await?;
    info!(first, "joined the call (membership sent)");
    let state = Arc::new(Mutex::new(KeepState {
        delay_id,
        started: Instant::now(),
        refreshes: 0,
        created_ts: None,
        seen: false,
    }));
    let task = tokio::spawn(keep_alive(ctx.clone(), state.clone(), members));
    if first {
        if let Err(e) = ctx.ring(&event_id).await {
            warn!("could not ring the room: {e}");
        }
    }
    Ok(ActiveMembership {
        ctx,
        state,
        task,
        membership_event_id: event_id,
    })
}

impl ActiveMembership {
    /// Leaves: sends the delayed leave now, or (if that fails) puts `{}` directly.
    pub(crate) async fn leave(self) -> Result<(), MatrixError> {
        self.task.abort();
        let delay_id = self.state.lock().await.delay_id.take();
        if let Some(id) = delay_id {
            match self.ctx.send_delayed(&id).await {
                Ok(()) => {
                    info!("left the call (delayed leave sent)");
                    return Ok(());
                }
                Err(e) => warn!(
                    "sending the delayed leave failed ({e}); putting the leave state directly"
                ),
            }
        }
        self.ctx.send_leave_state().await?;
        info!("left the call");
        Ok(())
    }
}

async fn keep_alive(
    ctx: Arc<MembershipCtx>,
    state: Arc<Mutex<KeepState>>,
    members: watch::Receiver<Vec<CallMember>>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut st = state.lock().await;
        // 1. Keep the delayed leave from firing.
        let restart = match &st.delay_id {
            Some(id) => Some(ctx.restart(id).await),
            None => None,
        };
        match restart {
            Some(Ok(true)) | None => {}
            Some(Ok(false)) => {
                info!("the delayed leave is gone; scheduling a new one");
                match ctx.schedule_delayed_leave().await {
                    Ok(id) => st.delay_id = id,
                    Err(e) => warn!("could not schedule a new delayed leave: {e}"),
                }
            }
            Some(Err(e)) => debug!("restarting the delayed leave failed: {e}"),
        }
        // 2. Our membership must still be there.
        let own = members.borrow().iter().find(|m| ctx.is_own(m)).cloned();
        match own {
            Some(m) => {
                st.seen = true;
                if st.created_ts.is_none() {
                    st.created_ts = Some(m.created_ts);
                }
            }
            None if st.seen => {
                warn!("our call membership disappeared; joining again");
                if st.delay_id.is_none() {
                    match ctx.schedule_delayed_leave().await {
                        Ok(id) => st.delay_id = id,
                        Err(e) => warn!("could not schedule a new delayed leave: {e}"),
                    }
                }
                match ctx.send_membership(None, MEMBERSHIP_EXPIRES_MS).await {
                    Ok(_) => {
                        st.seen = false;
                        st.created_ts = None;
                        st.started = Instant::now();
                        st.refreshes = 0;
                    }
                    Err(e) => warn!("re-joining failed: {e}"),
                }
                continue;
            }
            None => {}
        }
        // 3. Hourly refresh with the same created_ts and a longer expiry.
        let (due_ms, expires) = refresh_due(st.refreshes + 1);
        if st.started.elapsed() >= Duration::from_millis(due_ms) {
            let created = st.created_ts;
            match ctx.send_membership(created, expires).await {
                Ok(_) => st.refreshes += 1,
                Err(e) => warn!("refreshing the call membership failed: {e}"),
            }
        }
    }
}
