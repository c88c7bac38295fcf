//! LiveKit participant identities of MatrixRTC calls: `@user:server:DEVICE` strings.
//!
//! Owns only string parsing; knows nothing of the network.

/// Splits a MatrixRTC LiveKit identity `@user:server:DEVICE` into `(user_id, device_id)`.
///
/// The device id is the part after the last `:`; the user id keeps its server part, which
/// may itself contain a port (`@alice:example.org:8448:ABCDEF`). Returns `None` when the
/// identity does not have that shape (for example an agent or egress participant).
pub fn split_identity(identity: &str) -> Option<(&str, &str)> {
    let (user, device) = identity.rsplit_once(':')?;
    let (localpart, server) = user.strip_prefix('@')?.split_once(':')?;
    if localpart.is_empty() || server.is_empty() || device.is_empty() {
        return None;
    }
    Some((user, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_user_and_device() {
        assert_eq!(
            split_identity("@alice:example.org:ABCDEFGHIJ"),
            Some(("@alice:example.org", "ABCDEFGHIJ"))
        );
    }

    #[test]
    fn keeps_server_port_in_user_id() {
        assert_eq!(
            split_identity("@bob:matrix.example.org:8448:DEV1"),
            Some(("@bob:matrix.example.org:8448", "DEV1"))
        );
    }

    #[test]
    fn rejects_identities_of_other_shapes() {
        for bad in [
            "",
            "agent-123",
            "@alice:example.org",
            "alice:example.org:DEV",
            "@:example.org:DEV",
            "@alice::DEV",
            "@alice:example.org:",
        ] {
            assert_eq!(split_identity(bad), None, "{bad:?}");
        }
    }
}
