//! The sync loop: keeps matrix-sdk's store current, recomputes the call's members from room
//! state after every sync (and at the soonest membership expiry), turns changes into
//! [`MatrixEvent`]s, and spots door-open requests (a room message "open" or a 🔑 reaction).
//!
//! Owns the `/sync` connection and the ConnectionLost/ConnectionBack/TokenError reports; it
//! sends nothing to the room.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{ProcessedToDeviceEvent, RawAnySyncOrStrippedState};
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::{Client, Room};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::error::MatrixError;
use super::key_message::{ReceivedKeyMessage, KEY_EVENT_TYPE};
use super::manager::now_ms;
use super::members::{
    joined_users, next_expiry, valid_members, CallMember, CallTracker, CALL_MEMBER_TYPE,
};
use super::MatrixEvent;

/// Longest long-poll.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Door-open requests older than this are ignored.
const STALE_REQUEST_MS: u64 = 60_000;

/// A door-open request in a timeline event: `m.room.message` with body "open" (any case,
/// trimmed) or an `m.reaction` with key 🔑, from someone other than us. Returns the sender.
pub fn door_request(event: &Value, own_user: &str) -> Option<String> {
    let sender = event.get("sender")?.as_str()?;
    if sender == own_user {
        return None;
    }
    let ok = match event.get("type")?.as_str()? {
        "m.room.message" => event
            .pointer("/content/body")
            .and_then(Value::as_str)
            .is_some_and(|b| b.trim().eq_ignore_ascii_case("open")),
        "m.reaction" => event
            .pointer("/content/m.relates_to/key")
            .and_then(Value::as_str)
            .is_some_and(|k| k.replace('\u{fe0f}', "").trim() == "🔑"),
        _ => false,
    };
    ok.then(|| sender.to_owned())
}

fn raw_states(raws: Vec<RawAnySyncOrStrippedState>) -> Vec<Value> {
    raws.into_iter()
        .filter_map(|r| match r {
            RawAnySyncOrStrippedState::Sync(raw) => serde_json::from_str(raw.json().get()).ok(),
            RawAnySyncOrStrippedState::Stripped(_) => None,
        })
        .collect()
}

/// The valid call members according to the local store.
pub(crate) async fn current_members(room: &Room) -> Result<Vec<CallMember>, matrix_sdk::Error> {
    let calls = raw_states(
        room.get_state_events(StateEventType::from(CALL_MEMBER_TYPE))
            .await?,
    );
    let joined = joined_users(&raw_states(
        room.get_state_events(StateEventType::RoomMember).await?,
    ));
    Ok(valid_members(&calls, &joined, now_ms()))
}

pub(crate) struct SyncLoop {
    pub client: Client,
    pub room: Room,
    pub homeserver: String,
    pub own_user: String,
    pub own_device: String,
    pub events: mpsc::Sender<MatrixEvent>,
    pub members: watch::Sender<Vec<CallMember>>,
    /// Whether the device is in the call (set by the facade).
    pub joined: Arc<AtomicBool>,
    /// Where media key messages go while a key exchange runs.
    pub key_inbox: KeyInbox,
}

/// The running key exchange's inbox, if any.
pub(crate) type KeyInbox = Arc<std::sync::Mutex<Option<mpsc::Sender<ReceivedKeyMessage>>>>;

/// A media key message among the to-device events: who sent it, whether Olm-encrypted, content.
pub(crate) fn key_message(ev: &ProcessedToDeviceEvent) -> Option<ReceivedKeyMessage> {
    let (raw, encrypted, sender) = match ev {
        ProcessedToDeviceEvent::Decrypted {
            raw,
            encryption_info,
        } => (raw, true, Some(encryption_info.sender.to_string())),
        ProcessedToDeviceEvent::PlainText(raw) => (raw, false, None),
        _ => return None,
    };
    let v: Value = serde_json::from_str(raw.json().get()).ok()?;
    if v.get("type").and_then(Value::as_str) != Some(KEY_EVENT_TYPE) {
        return None;
    }
    let sender = sender.or_else(|| v.get("sender")?.as_str().map(str::to_owned))?;
    Some(ReceivedKeyMessage {
        sender,
        encrypted,
        content: v.get("content")?.clone(),
    })
}

impl SyncLoop {
    async fn emit(&self, e: MatrixEvent) {
        // A closed receiver means the daemon is shutting down; nothing to do then.
        let _ = self.events.send(e).await;
    }

    /// Runs until the task is aborted. `token` is the batch token of the sync done in `start`.
    pub(crate) async fn run(self, mut token: String) {
        let mut tracker = CallTracker::new(&self.own_user, &self.own_device);
        self.refresh_members(&mut tracker).await;
        let mut failures = 0u32;
        let mut last_report: Option<MatrixEvent> = None;
        loop {
            let timeout = match next_expiry(&self.members.borrow()) {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms()).saturating_add(50))
                    .clamp(Duration::from_secs(1), SYNC_TIMEOUT),
                None => SYNC_TIMEOUT,
            };
            let settings = SyncSettings::default()
                .timeout(timeout)
                .token(token.clone());
            match self.client.sync_once(settings).await {
                Ok(resp) => {
                    if failures > 0 {
                        self.emit(MatrixEvent::ConnectionBack).await;
                        failures = 0;
                        last_report = None;
                    }
                    token = resp.next_batch.clone();
                    self.forward_keys(&resp.to_device);
                    if let Some(update) = resp.rooms.joined.get(self.room.room_id()) {
                        for ev in &update.timeline.events {
                            let Ok(v) = serde_json::from_str::<Value>(ev.raw().json().get()) else {
                                continue;
                            };
                            // A request older than a minute (a gap after a reconnect) is stale.
                            let ts = v
                                .get("origin_server_ts")
                                .and_then(Value::as_u64)
                                .unwrap_or(0);
                            if ts + STALE_REQUEST_MS < now_ms() {
                                continue;
                            }
                            if let Some(user_id) = door_request(&v, &self.own_user) {
                                self.emit(MatrixEvent::DoorOpenRequest { user_id }).await;
                            }
                        }
                    }
                    self.refresh_members(&mut tracker).await;
                }
                Err(e) => {
                    let err = MatrixError::from_sdk("sync", &self.homeserver, &e);
                    failures += 1;
                    // Report once per kind of trouble (not on every retry).
                    let report = match &err {
                        MatrixError::TokenRevoked(reason) => MatrixEvent::TokenError {
                            reason: reason.clone(),
                        },
                        _ => MatrixEvent::ConnectionLost,
                    };
                    if last_report.as_ref() != Some(&report) {
                        last_report = Some(report.clone());
                        self.emit(report).await;
                    }
                    let backoff = Duration::from_millis(500u64 << failures.min(6)).min(MAX_BACKOFF);
                    warn!(?backoff, "sync failed: {err}");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn forward_keys(&self, events: &[ProcessedToDeviceEvent]) {
        let inbox = self.key_inbox.lock().ok().and_then(|i| i.clone());
        for msg in events.iter().filter_map(key_message) {
            match &inbox {
                Some(tx) => {
                    if tx.try_send(msg).is_err() {
                        warn!("media key inbox full or closed; a key message was dropped");
                    }
                }
                None => debug!(sender = %msg.sender, "media key message outside a call ignored"),
            }
        }
    }

    async fn refresh_members(&self, tracker: &mut CallTracker) {
        match current_members(&self.room).await {
            Ok(members) => {
                let changes = tracker.update(&members, self.joined.load(Ordering::SeqCst));
                // The list is current before anyone hears about a change.
                self.members.send_replace(members);
                for e in changes {
                    debug!(?e, "call change");
                    self.emit(e).await;
                }
            }
            Err(e) => warn!("cannot read the room state from the store: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::ruma::serde::Raw;
    use serde_json::json;

    fn plain(v: Value) -> ProcessedToDeviceEvent {
        ProcessedToDeviceEvent::PlainText(Raw::from_json_string(v.to_string()).unwrap())
    }

    #[test]
    fn cleartext_key_messages_are_marked_unencrypted_and_other_types_ignored() {
        let content = json!({"keys": {"index": 0, "key": "AAAA"}, "room_id": "!r:hs"});
        let msg = key_message(&plain(json!({"type": KEY_EVENT_TYPE, "sender": "@eve:hs",
            "content": content})))
        .expect("a key message");
        assert_eq!(
            msg,
            ReceivedKeyMessage {
                sender: "@eve:hs".into(),
                encrypted: false,
                content,
            }
        );
        assert_eq!(
            key_message(&plain(
                json!({"type": "m.room_key_request", "sender": "@eve:hs",
                "content": {}})
            )),
            None
        );
    }

    #[test]
    fn door_requests_from_message_and_key_reaction() {
        let own = "@door:x";
        let msg = |body: &str, sender: &str| {
            json!({"type": "m.room.message", "sender": sender,
            "content": {"msgtype": "m.text", "body": body}})
        };
        assert_eq!(
            door_request(&msg(" Open ", "@a:x"), own).as_deref(),
            Some("@a:x")
        );
        assert_eq!(door_request(&msg("open the door", "@a:x"), own), None);
        assert_eq!(
            door_request(&msg("open", own), own),
            None,
            "own messages never open"
        );
        let react = |key: &str| {
            json!({"type": "m.reaction", "sender": "@b:x",
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": key}}})
        };
        assert_eq!(door_request(&react("🔑"), own).as_deref(), Some("@b:x"));
        assert_eq!(
            door_request(&react("🔑\u{fe0f}"), own).as_deref(),
            Some("@b:x")
        );
        assert_eq!(door_request(&react("👍"), own), None);
        assert_eq!(door_request(&json!({"type": "m.room.message"}), own), None);
    }
}
