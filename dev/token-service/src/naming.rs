//! LiveKit room aliases and participant identities, exactly as lk-jwt-service derives them.
//!
//! Owns: the hashing scheme (`LiveKitRoomAliasFor`, `LiveKitIdentityFor` and the legacy
//! `user:device` identity). Must not touch: I/O.
//!
//! The hash input is Go's `json.Marshal` of a string array. Go escapes `<`, `>`, `&`, U+2028
//! and U+2029 as `\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029` where serde_json writes them
//! raw, so the array is written with [`GoJsonFormatter`] to hash the same bytes.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The slot `/sfu/get` implies (`m.call` application, room scope).
pub const LEGACY_SLOT_ID: &str = "m.call#ROOM";

/// LiveKit room name for a (Matrix room id, MatrixRTC slot id) pair.
pub fn room_alias(room_id: &str, slot_id: &str) -> String {
    hash_string_array(&[room_id, slot_id])
}

/// LiveKit identity of a `/get_token` participant: hash of (verified user, claimed device,
/// member id).
pub fn member_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hash_string_array(&[user_id, device_id, member_id])
}

/// LiveKit identity of a `/sfu/get` participant: `<verified user>:<device id>` (an empty
/// device id gives `@u:server:`, as in the real service).
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

/// Unpadded standard base64 of SHA-256 of the compact Go-style JSON of `parts`.
fn hash_string_array(parts: &[&str]) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(go_json(parts)))
}

/// Compact JSON of a string array, escaped as Go's `encoding/json` does.
pub fn go_json(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoJsonFormatter);
    // Serialising strings into a Vec cannot fail: no I/O error, no non-string keys.
    parts
        .serialize(&mut ser)
        .expect("serialising a string array into memory cannot fail");
    out
}

/// serde_json's compact formatter plus Go's HTML-safe escapes.
struct GoJsonFormatter;

impl serde_json::ser::Formatter for GoJsonFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_alias_matches_msc4195_vector() {
        assert_eq!(
            room_alias("!roomid:example.com", "slot1234"),
            "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
        );
    }

    #[test]
    fn legacy_room_alias_uses_the_m_call_room_slot() {
        assert_eq!(
            room_alias("!roomid:example.com", LEGACY_SLOT_ID),
            "F4oOprKFBq6JHqy2qYpq6UQQmR7hCvxkQQoUrd0+SbI"
        );
    }

    #[test]
    fn member_identity_matches_vector() {
        assert_eq!(
            member_identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
    }

    #[test]
    fn legacy_identity_is_user_colon_device() {
        assert_eq!(
            legacy_identity("@bot:example.com", "DEVICEID"),
            "@bot:example.com:DEVICEID"
        );
        assert_eq!(legacy_identity("@bot:example.com", ""), "@bot:example.com:");
    }

    #[test]
    fn json_is_escaped_like_go() {
        // Go: json.Marshal([]string{"a<b>&c\u2028\u2029", "q\"\\\n\t\u0001\u007f"})
        let json = go_json(&["a<b>&c\u{2028}\u{2029}", "q\"\\\n\t\u{1}\u{7f}"]);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            "[\"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\",\"q\\\"\\\\\\n\\t\\u0001\u{7f}\"]"
        );
    }

    #[test]
    fn plain_ids_are_written_verbatim() {
        // A plain id is written verbatim, so the vectors above really test the hash.
        assert_eq!(
            go_json(&["!roomid:example.com", "m.call#ROOM"]),
            br#"["!roomid:example.com","m.call#ROOM"]"#.to_vec()
        );
    }
}
