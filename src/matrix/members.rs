//! Who is in the room's call, computed from room state (pure), and the changes the daemon
//! sees (member joined/left, call ended, incoming call).
//!
//! Rules follow matrix-js-sdk (`CallMembership`, `sessionMembershipsForSlot`): a
//! `org.matrix.msc3401.call.member` state event counts iff its content is non-empty with
//! `application: "m.call"`, `call_id: ""`, a `device_id`, is not expired
//! (`now < (created_ts ?? origin_server_ts) + (expires ?? 4h)`) and its sender's room membership
//! is `join`. Owns no I/O and no clock: time is a parameter.

use std::collections::HashSet;

use serde_json::Value;

use super::MatrixEvent;

pub const CALL_MEMBER_TYPE: &str = "org.matrix.msc3401.call.member";
/// Default lifetime of a membership without `expires`: 4 h.
pub const DEFAULT_EXPIRES_MS: u64 = 4 * 3600 * 1000;

/// One valid call membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMember {
    pub user_id: String,
    pub device_id: String,
    pub state_key: String,
    pub event_id: Option<String>,
    /// `created_ts ?? origin_server_ts` (ms since the epoch).
    pub created_ts: u64,
    /// When the membership stops counting (ms since the epoch).
    pub expires_at: u64,
    /// `foci_preferred[0].livekit_service_url`, the SFU this member publishes on.
    pub livekit_service_url: Option<String>,
}

/// Parses one call.member state event (the whole event JSON, as in `/sync` or `/state`).
/// `None` if it does not count as a membership at `now_ms`.
pub fn parse_membership(
    event: &Value,
    joined: &HashSet<String>,
    now_ms: u64,
) -> Option<CallMember> {
    if event.get("type").and_then(Value::as_str) != Some(CALL_MEMBER_TYPE) {
        return None;
    }
    let sender = event.get("sender")?.as_str()?;
    let state_key = event.get("state_key")?.as_str()?;
    let content = event.get("content")?.as_object()?;
    if content.get("application").and_then(Value::as_str) != Some("m.call") {
        return None;
    }
    if content.get("call_id").and_then(Value::as_str) != Some("") {
        return None;
    }
    let device_id = content.get("device_id")?.as_str()?;
    if device_id.is_empty() || !joined.contains(sender) {
        return None;
    }
    // A state key starting with '@' must be the sender; the `_@user_DEVICE_…` form must name it.
    if state_key.starts_with('@') && state_key != sender {
        return None;
    }
    if state_key.starts_with("_@") && !state_key[1..].starts_with(&format!("{sender}_")) {
        return None;
    }
    let origin_ts = event.get("origin_server_ts").and_then(Value::as_u64);
    let created_ts = content
        .get("created_ts")
        .and_then(Value::as_u64)
        .or(origin_ts)?;
    let expires = content
        .get("expires")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EXPIRES_MS);
    let expires_at = created_ts.saturating_add(expires);
    if now_ms >= expires_at {
        return None;
    }
    let livekit_service_url = content
        .get("foci_preferred")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|f| f.get("livekit_service_url"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(CallMember {
        user_id: sender.to_owned(),
        device_id: device_id.to_owned(),
        state_key: state_key.to_owned(),
        event_id: event
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_ts,
        expires_at,
        livekit_service_url,
    })
}

/// All valid memberships, oldest first.
pub fn valid_members(events: &[Value], joined: &HashSet<String>, now_ms: u64) -> Vec<CallMember> {
    let mut members: Vec<CallMember> = events
        .iter()
        .filter_map(|e| parse_membership(e, joined, now_ms))
        .collect();
    members.sort_by(|a, b| {
        (a.created_ts, &a.user_id, &a.device_id).cmp(&(b.created_ts, &b.user_id, &b.device_id))
    });
    members
}

/// The user ids whose `m.room.member` state is `join`.
pub fn joined_users(member_events: &[Value]) -> HashSet<String> {
    member_events
        .iter()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.room.member"))
        .filter(|e| e.pointer("/content/membership").and_then(Value::as_str) == Some("join"))
        .filter_map(|e| {
            e.get("state_key")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// The soonest moment a membership in `members` expires: the list must be recomputed then.
pub fn next_expiry(members: &[CallMember]) -> Option<u64> {
    members.iter().map(|m| m.expires_at).min()
}

/// Turns successive member lists into events for the daemon.
#[derive(Debug)]
pub struct CallTracker {
    own_user: String,
    own_device: String,
    others: Vec<(String, String)>,
    initialised: bool,
}

impl CallTracker {
    pub fn new(own_user: &str, own_device: &str) -> Self {
        Self {
            own_user: own_user.to_owned(),
            own_device: own_device.to_owned(),
            others: Vec::new(),
            initialised: false,
        }
    }

    /// Whether `m` is this device's own membership.
    pub fn is_own(&self, m: &CallMember) -> bool {
        m.user_id == self.own_user && m.device_id == self.own_device
    }

    /// The other members (user, device) as last seen.
    pub fn others(&self) -> &[(String, String)] {
        &self.others
    }

    /// Feeds the current member list. `joined` says whether the device is (trying to be) in
    /// the call. Emits:
    /// - `MemberJoined`/`MemberLeft` for every other (user, device) appearing/disappearing;
    /// - `IncomingCall` when a call starts while the device is not in it (first other member),
    ///   `IncomingCallGone` when that call empties again;
    /// - `CallEnded` when the last other member leaves while the device is in the call.
    pub fn update(&mut self, members: &[CallMember], joined: bool) -> Vec<MatrixEvent> {
        let now: Vec<(String, String)> = members
            .iter()
            .filter(|m| !self.is_own(m))
            .map(|m| (m.user_id.clone(), m.device_id.clone()))
            .collect();
        let mut out = Vec::new();
        let was_empty = self.others.is_empty();
        for (u, d) in &self.others {
            if !now.iter().any(|(nu, nd)| nu == u && nd == d) {
                out.push(MatrixEvent::MemberLeft {
                    user_id: u.clone(),
                    device_id: d.clone(),
                });
            }
        }
        for (u, d) in &now {
            if !self.others.iter().any(|(ou, od)| ou == u && od == d) {
                out.push(MatrixEvent::MemberJoined {
                    user_id: u.clone(),
                    device_id: d.clone(),
                });
            }
        }
        if was_empty && !now.is_empty() && !joined {
            out.push(MatrixEvent::IncomingCall);
        }
        if !was_empty && now.is_empty() && self.initialised {
            out.push(if joined {
                MatrixEvent::CallEnded
            } else {
                MatrixEvent::IncomingCallGone
            });
        }
        self.others = now;
        self.initialised = true;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_733_300_000_000;

    fn membership(sender: &str, device: &str, content_extra: Value, ts: u64) -> Value {
        let mut content = json!({
            "application": "m.call", "call_id": "", "scope": "m.room", "device_id": device,
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "http://127.0.0.1:8090",
                                "livekit_alias": "!room:example.org"}],
        });
        if let (Some(c), Some(extra)) = (content.as_object_mut(), content_extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        json!({"type": CALL_MEMBER_TYPE, "sender": sender,
               "state_key": format!("_{sender}_{device}_m.call"),
               "event_id": format!("$ev_{device}"), "origin_server_ts": ts, "content": content})
    }

    fn joined(users: &[&str]) -> HashSet<String> {
        users.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn valid_membership_is_parsed_with_its_transport() {
        let ev = membership("@alice:example.org", "ALICE", json!({}), NOW - 1000);
        let m = parse_membership(&ev, &joined(&["@alice:example.org"]), NOW).unwrap();
        assert_eq!(m.user_id, "@alice:example.org");
        assert_eq!(m.device_id, "ALICE");
        assert_eq!(m.created_ts, NOW - 1000);
        assert_eq!(m.expires_at, NOW - 1000 + DEFAULT_EXPIRES_MS);
        assert_eq!(m.event_id.as_deref(), Some("$ev_ALICE"));
        assert_eq!(
            m.livekit_service_url.as_deref(),
            Some("http://127.0.0.1:8090")
        );
    }

    #[test]
    fn left_foreign_and_non_joined_memberships_do_not_count() {
        let j = joined(&["@alice:example.org"]);
        let left = json!({"type": CALL_MEMBER_TYPE, "sender": "@alice:example.org",
            "state_key": "_@alice:example.org_ALICE_m.call", "origin_server_ts": NOW, "content": {}});
        assert_eq!(parse_membership(&left, &j, NOW), None);
        let old_format = json!({"type": CALL_MEMBER_TYPE, "sender": "@alice:example.org",
            "state_key": "@alice:example.org", "origin_server_ts": NOW,
            "content": {"memberships": [{"application": "m.call", "call_id": ""}]}});
        assert_eq!(parse_membership(&old_format, &j, NOW), None);
        let other_app = membership(
            "@alice:example.org",
            "A",
            json!({"application": "m.other"}),
            NOW,
        );
        assert_eq!(parse_membership(&other_app, &j, NOW), None);
        let other_call = membership("@alice:example.org", "A", json!({"call_id": "x"}), NOW);
        assert_eq!(parse_membership(&other_call, &j, NOW), None);
        let not_joined = membership("@bob:example.org", "B", json!({}), NOW);
        assert_eq!(parse_membership(&not_joined, &j, NOW), None);
        let mut forged = membership("@alice:example.org", "A", json!({}), NOW);
        forged["state_key"] = json!("_@bob:example.org_A_m.call");
        assert_eq!(parse_membership(&forged, &j, NOW), None);
    }

    #[test]
    fn expiry_counts_from_created_ts_else_origin_server_ts() {
        let j = joined(&["@alice:example.org"]);
        // origin 5 h ago, default 4 h → expired.
        let old = membership("@alice:example.org", "A", json!({}), NOW - 5 * 3600 * 1000);
        assert_eq!(parse_membership(&old, &j, NOW), None);
        // Same origin, but refreshed with a longer expires → valid.
        let refreshed = membership(
            "@alice:example.org",
            "A",
            json!({"created_ts": NOW - 5 * 3600 * 1000, "expires": 8 * 3600 * 1000}),
            NOW,
        );
        assert!(parse_membership(&refreshed, &j, NOW).is_some());
        // created_ts wins over origin_server_ts.
        let created_old = membership(
            "@alice:example.org",
            "A",
            json!({"created_ts": NOW - 4 * 3600 * 1000}),
            NOW,
        );
        assert_eq!(parse_membership(&created_old, &j, NOW), None);
        // Exactly at expiry it no longer counts; a millisecond before it does.
        let edge = membership(
            "@alice:example.org",
            "A",
            json!({"expires": 1000}),
            NOW - 1000,
        );
        assert_eq!(parse_membership(&edge, &j, NOW), None);
        assert!(parse_membership(&edge, &j, NOW - 1).is_some());
    }

    #[test]
    fn members_sorted_oldest_first_and_next_expiry() {
        let j = joined(&["@a:x", "@b:x"]);
        let events = vec![
            membership("@b:x", "B", json!({"expires": 60_000}), NOW - 10),
            membership("@a:x", "A", json!({}), NOW - 20),
        ];
        let ms = valid_members(&events, &j, NOW);
        assert_eq!(
            ms.iter().map(|m| m.device_id.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(next_expiry(&ms), Some(NOW - 10 + 60_000));
    }

    #[test]
    fn joined_users_from_member_events() {
        let evs = vec![
            json!({"type": "m.room.member", "state_key": "@a:x", "content": {"membership": "join"}}),
            json!({"type": "m.room.member", "state_key": "@b:x", "content": {"membership": "leave"}}),
            json!({"type": "m.room.member", "state_key": "@c:x", "content": {"membership": "invite"}}),
        ];
        assert_eq!(joined_users(&evs), joined(&["@a:x"]));
    }

    fn m(user: &str, device: &str) -> CallMember {
        CallMember {
            user_id: user.into(),
            device_id: device.into(),
            state_key: format!("_{user}_{device}_m.call"),
            event_id: None,
            created_ts: NOW,
            expires_at: NOW + DEFAULT_EXPIRES_MS,
            livekit_service_url: None,
        }
    }

    #[test]
    fn tracker_reports_incoming_call_and_its_end_while_idle() {
        let mut t = CallTracker::new("@door:x", "DOOR");
        assert_eq!(t.update(&[], false), vec![]);
        let ev = t.update(&[m("@a:x", "A")], false);
        assert_eq!(
            ev,
            vec![
                MatrixEvent::MemberJoined {
                    user_id: "@a:x".into(),
                    device_id: "A".into()
                },
                MatrixEvent::IncomingCall,
            ]
        );
        assert_eq!(t.update(&[m("@a:x", "A")], false), vec![]);
        let ev = t.update(&[], false);
        assert_eq!(
            ev,
            vec![
                MatrixEvent::MemberLeft {
                    user_id: "@a:x".into(),
                    device_id: "A".into()
                },
                MatrixEvent::IncomingCallGone,
            ]
        );
    }

    #[test]
    fn tracker_reports_call_ended_when_last_other_leaves_while_joined() {
        let mut t = CallTracker::new("@door:x", "DOOR");
        let own = m("@door:x", "DOOR");
        assert_eq!(
            t.update(std::slice::from_ref(&own), true),
            vec![],
            "own membership is not reported"
        );
        let ev = t.update(&[own.clone(), m("@a:x", "A"), m("@a:x", "A2")], true);
        assert_eq!(
            ev.len(),
            2,
            "two devices joined, no IncomingCall while joined: {ev:?}"
        );
        let ev = t.update(&[own.clone(), m("@a:x", "A2")], true);
        assert_eq!(
            ev,
            vec![MatrixEvent::MemberLeft {
                user_id: "@a:x".into(),
                device_id: "A".into()
            }]
        );
        let ev = t.update(&[own], true);
        assert_eq!(
            ev,
            vec![
                MatrixEvent::MemberLeft {
                    user_id: "@a:x".into(),
                    device_id: "A2".into()
                },
                MatrixEvent::CallEnded,
            ]
        );
    }

    #[test]
    fn tracker_first_update_with_running_call_is_incoming() {
        let mut t = CallTracker::new("@door:x", "DOOR");
        let ev = t.update(&[m("@a:x", "A")], false);
        assert!(ev.contains(&MatrixEvent::IncomingCall));
    }
}
