//! MatrixRTC membership wire formats (pure): the `org.matrix.msc3401.call.member` state key
//! and content exactly as Element Call's compatibility mode sends them (matrix-js-sdk
//! `MembershipManager.makeMyMembership`), the leave content, the ring notification and the
//! keep-alive/refresh timing. Hand-built JSON because ruma's types drop `membershipID` and lack
//! `multi_sfu`. The requests that carry them are in `manager.rs`.

use std::time::Duration;

use serde_json::{json, Value};

pub use super::members::CALL_MEMBER_TYPE;
pub const RING_TYPE: &str = "org.matrix.msc4075.rtc.notification";

/// Delay of the scheduled leave (Element Call: 10 s).
pub const DELAYED_LEAVE: Duration = Duration::from_secs(10);
/// How often the delayed leave is restarted.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Timeout of one restart request.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(2);
/// `expires` of the first membership (4 h).
pub const MEMBERSHIP_EXPIRES_MS: u64 = 4 * 3600 * 1000;
/// Refresh period of the membership (min(expires, 1 h)).
pub const REFRESH_PERIOD_MS: u64 = 3600 * 1000;
/// Headroom before each refresh.
pub const REFRESH_HEADROOM_MS: u64 = 5000;
/// How long the ring notification is valid (ms).
pub const RING_LIFETIME_MS: u64 = 30_000;

/// `_@user:server_DEVICE_m.call` (the leading `_` because a key starting with `@` must equal
/// the sender).
pub fn state_key(user_id: &str, device_id: &str) -> String {
    format!("_{user_id}_{device_id}_m.call")
}

/// The LiveKit identity of a device in compatibility mode: `@user:server:DEVICE`.
pub fn rtc_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

/// What the membership says about us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipParams {
    pub user_id: String,
    pub device_id: String,
    pub room_id: String,
    pub livekit_service_url: String,
}

/// The membership content. `created_ts` is absent on the first send; re-sends carry the first
/// event's `created_ts ?? origin_server_ts`.
pub fn membership_content(p: &MembershipParams, created_ts: Option<u64>, expires_ms: u64) -> Value {
    let mut content = json!({
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": p.device_id,
        "membershipID": rtc_identity(&p.user_id, &p.device_id),
        "expires": expires_ms,
        "m.call.intent": "audio",
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [{
            "type": "livekit",
            "livekit_service_url": p.livekit_service_url,
            "livekit_alias": p.room_id,
        }],
    });
    if let (Some(ts), Some(obj)) = (created_ts, content.as_object_mut()) {
        obj.insert("created_ts".into(), json!(ts));
    }
    content
}

/// Leave = empty content.
pub fn leave_content() -> Value {
    json!({})
}

/// The ring sent when the device is the first member, pointing at its membership event.
pub fn ring_content(membership_event_id: &str, sender_ts: u64) -> Value {
    json!({
        "m.mentions": {"user_ids": [], "room": true},
        "notification_type": "ring",
        "m.relates_to": {"rel_type": "m.reference", "event_id": membership_event_id},
        "sender_ts": sender_ts,
        "lifetime": RING_LIFETIME_MS,
        "m.call.intent": "audio",
    })
}

/// When the n-th refresh (n ≥ 1) is due, relative to the first send (ms), and the `expires` it
/// carries: at `min(expires, 1h)·n − 5 s`, `expires = 4h·(n+1)`.
pub fn refresh_due(n: u64) -> (u64, u64) {
    let period = REFRESH_PERIOD_MS.min(MEMBERSHIP_EXPIRES_MS);
    (
        (period * n).saturating_sub(REFRESH_HEADROOM_MS),
        MEMBERSHIP_EXPIRES_MS * (n + 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MembershipParams {
        MembershipParams {
            user_id: "@bot:example.com".into(),
            device_id: "DEVICEID".into(),
            room_id: "!roomid:example.com".into(),
            livekit_service_url: "https://matrix-rtc.example.com/livekit/jwt".into(),
        }
    }

    #[test]
    fn state_key_and_identity() {
        assert_eq!(
            state_key("@bot:example.com", "DEVICEID"),
            "_@bot:example.com_DEVICEID_m.call"
        );
        assert_eq!(
            rtc_identity("@bot:example.com", "DEVICEID"),
            "@bot:example.com:DEVICEID"
        );
    }

    #[test]
    fn first_membership_is_exactly_element_calls_without_created_ts() {
        let expected: Value = serde_json::from_str(r#"
            {"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "DEVICEID",
             "membershipID": "@bot:example.com:DEVICEID", "expires": 14400000, "m.call.intent": "audio",
             "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
             "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://matrix-rtc.example.com/livekit/jwt",
                                 "livekit_alias": "!roomid:example.com"}]}"#).unwrap();
        assert_eq!(
            membership_content(&params(), None, MEMBERSHIP_EXPIRES_MS),
            expected
        );
    }

    #[test]
    fn resend_carries_created_ts() {
        let c = membership_content(&params(), Some(1733300000000), 28_800_000);
        assert_eq!(c["created_ts"], json!(1733300000000u64));
        assert_eq!(c["expires"], json!(28_800_000));
    }

    #[test]
    fn ring_notification_is_exact() {
        let expected: Value = serde_json::from_str(
            r#"
            {"m.mentions": {"user_ids": [], "room": true}, "notification_type": "ring",
             "m.relates_to": {"rel_type": "m.reference", "event_id": "$member"},
             "sender_ts": 1733300000000, "lifetime": 30000, "m.call.intent": "audio"}"#,
        )
        .unwrap();
        assert_eq!(ring_content("$member", 1733300000000), expected);
        assert_eq!(leave_content(), json!({}));
    }

    #[test]
    fn refresh_schedule_is_hourly_minus_headroom_with_growing_expires() {
        assert_eq!(refresh_due(1), (3_595_000, 28_800_000));
        assert_eq!(refresh_due(2), (7_195_000, 43_200_000));
    }
}
