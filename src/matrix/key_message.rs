//! The MatrixRTC media key message (pure): `io.element.call.encryption_keys` to-device content
//! exactly as matrix-js-sdk's `ToDeviceKeyTransport` sends it, and its validation on receipt.
//!
//! Owns the wire format only; who gets which key and when is [`super::media_keys`]'s job, and
//! the Olm encryption and the `/sendToDevice` request are [`super::key_exchange`]'s.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{json, Value};

/// The to-device event type (js-sdk `EventType.CallEncryptionKeysPrefix`).
pub const KEY_EVENT_TYPE: &str = "io.element.call.encryption_keys";
/// Longest raw key accepted from others (Element Call sends 16 bytes).
const MAX_KEY_LEN: usize = 128;

/// js-sdk `encodeBase64` writes padded standard base64; reading accepts both forms.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Raw media key bytes (the HKDF input of LiveKit frame encryption). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaKey(Vec<u8>);

impl MediaKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The key bytes, for the frame cryptor and the key message.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey([redacted])")
    }
}

/// Who sends the key: our own call membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySender<'a> {
    pub room_id: &'a str,
    pub device_id: &'a str,
    /// The membership's `membershipID` (`@user:server:DEVICE` in compatibility mode).
    pub member_id: &'a str,
}

/// The content of one key message.
pub fn key_content(from: &KeySender<'_>, index: u8, key: &MediaKey, sent_ts: u64) -> Value {
    json!({
        "keys": {"index": index, "key": B64.encode(key.expose())},
        "room_id": from.room_id,
        "member": {"claimed_device_id": from.device_id, "id": from.member_id},
        "session": {"call_id": "", "application": "m.call", "scope": "m.room"},
        "sent_ts": sent_ts,
    })
}

/// A key message as received: the to-device sender (from the Olm envelope when it was
/// encrypted) and the content.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedKeyMessage {
    pub sender: String,
    /// Whether it arrived Olm-encrypted (a cleartext copy is refused in encrypted rooms).
    pub encrypted: bool,
    pub content: Value,
}

/// A valid key for (sender, claimed device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub user_id: String,
    pub device_id: String,
    pub index: u8,
    pub key: MediaKey,
}

/// Why a received key message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("it arrived unencrypted (media keys in an encrypted room must come over Olm)")]
    Cleartext,
    #[error("it is for room {0}, not this call's room")]
    OtherRoom(String),
    #[error("it is for another call (session {0})")]
    OtherCall(String),
    #[error("it is malformed: {0}")]
    Malformed(&'static str),
    #[error("it claims to come from this device")]
    FromSelf,
}

/// Validates a received message for the call in `room_id` (js-sdk
/// `ToDeviceKeyTransport.getValidEventContent`, plus: Olm only, and only this call's session).
pub fn parse_key_message(
    msg: &ReceivedKeyMessage,
    room_id: &str,
) -> Result<ParsedKey, KeyRejected> {
    if !msg.encrypted {
        return Err(KeyRejected::Cleartext);
    }
    let c = &msg.content;
    match c.get("room_id").and_then(Value::as_str) {
        None => return Err(KeyRejected::Malformed("no room_id")),
        Some(r) if r != room_id => return Err(KeyRejected::OtherRoom(r.to_owned())),
        Some(_) => {}
    }
    if let Some(session) = c.get("session") {
        let app = session.get("application").and_then(Value::as_str);
        let call_id = session.get("call_id").and_then(Value::as_str);
        if app.is_some_and(|a| a != "m.call") || call_id.is_some_and(|id| !id.is_empty()) {
            return Err(KeyRejected::OtherCall(session.to_string()));
        }
    }
    let keys = c.get("keys").ok_or(KeyRejected::Malformed("no keys"))?;
    let raw = keys
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(KeyRejected::Malformed("no keys.key"))?;
    let index = keys
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or(KeyRejected::Malformed("keys.index is not a number 0..=255"))?;
    let key = B64
        .decode(raw)
        .map_err(|_| KeyRejected::Malformed("keys.key is not base64"))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(KeyRejected::Malformed("keys.key has an unusable length"));
    }
    let device_id = c
        .pointer("/member/claimed_device_id")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or(KeyRejected::Malformed("no member.claimed_device_id"))?;
    Ok(ParsedKey {
        user_id: msg.sender.clone(),
        device_id: device_id.to_owned(),
        index,
        key: MediaKey::new(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "!room:hs";

    fn sender() -> KeySender<'static> {
        KeySender {
            room_id: ROOM,
            device_id: "DOOR",
            member_id: "@door:hs:DOOR",
        }
    }

    fn received(content: Value) -> ReceivedKeyMessage {
        ReceivedKeyMessage {
            sender: "@alice:hs".into(),
            encrypted: true,
            content,
        }
    }

    #[test]
    fn content_is_exactly_what_element_call_sends() {
        let key = MediaKey::new(*b"0123456789abcdef");
        let expected: Value = serde_json::from_str(
            r#"{"keys": {"index": 7, "key": "MDEyMzQ1Njc4OWFiY2RlZg=="}, "room_id": "!room:hs",
                "member": {"claimed_device_id": "DOOR", "id": "@door:hs:DOOR"},
                "session": {"call_id": "", "application": "m.call", "scope": "m.room"},
                "sent_ts": 1733300000000}"#,
        )
        .unwrap();
        assert_eq!(key_content(&sender(), 7, &key, 1733300000000), expected);
    }

    #[test]
    fn own_message_parses_back_for_the_sender_and_claimed_device() {
        let key = MediaKey::new(*b"0123456789abcdef");
        let msg = received(key_content(&sender(), 255, &key, 1));
        assert_eq!(
            parse_key_message(&msg, ROOM),
            Ok(ParsedKey {
                user_id: "@alice:hs".into(),
                device_id: "DOOR".into(),
                index: 255,
                key,
            })
        );
    }

    #[test]
    fn unpadded_base64_and_no_session_are_accepted() {
        let msg = received(
            json!({"keys": {"index": 0, "key": "AAECAwQFBgcICQoLDA0ODw"},
            "room_id": ROOM, "member": {"claimed_device_id": "ALICEDEV"}}),
        );
        let parsed = parse_key_message(&msg, ROOM).unwrap();
        assert_eq!(parsed.key.expose(), (0u8..16).collect::<Vec<_>>());
        assert_eq!(parsed.device_id, "ALICEDEV");
    }

    #[test]
    fn bad_messages_are_rejected_with_the_reason() {
        let good = key_content(&sender(), 1, &MediaKey::new([1u8; 16]), 1);
        let mut clear = received(good.clone());
        clear.encrypted = false;
        assert_eq!(parse_key_message(&clear, ROOM), Err(KeyRejected::Cleartext));
        assert_eq!(
            parse_key_message(&received(good.clone()), "!other:hs"),
            Err(KeyRejected::OtherRoom(ROOM.into()))
        );
        let with = |ptr: &str, v: Value| {
            let mut c = good.clone();
            *c.pointer_mut(ptr).unwrap() = v;
            parse_key_message(&received(c), ROOM)
        };
        assert!(matches!(
            with("/session/call_id", json!("other")),
            Err(KeyRejected::OtherCall(_))
        ));
        assert!(matches!(
            with("/session/application", json!("m.game")),
            Err(KeyRejected::OtherCall(_))
        ));
        for (ptr, v) in [
            ("/keys/index", json!(256)),
            ("/keys/index", json!("1")),
            ("/keys/key", json!("")),
            ("/keys/key", json!("not base64!")),
            ("/member/claimed_device_id", json!("")),
            ("/room_id", json!(null)),
            ("/keys", json!(null)),
        ] {
            assert!(
                matches!(with(ptr, v.clone()), Err(KeyRejected::Malformed(_))),
                "{ptr} = {v}"
            );
        }
    }

    #[test]
    fn keys_never_print() {
        let key = MediaKey::new(*b"secretsecretsecr");
        assert_eq!(format!("{key:?}"), "MediaKey([redacted])");
        let parsed = ParsedKey {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            index: 0,
            key,
        };
        assert!(!format!("{parsed:?}").contains("secret"));
    }
}
