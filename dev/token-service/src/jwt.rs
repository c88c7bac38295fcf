//! LiveKit access tokens: the participant's join token and the service's own admin token.
//!
//! Owns: the grants and lifetimes (lk-jwt-service `getJoinToken`; server-sdk-go's RoomService
//! auth for `CreateRoom`). Must not touch: I/O.

use std::time::Duration;

use livekit_api::access_token::{AccessToken, AccessTokenError, VideoGrants};

use crate::redacted::Redacted;

/// Lifetime of a join token (the real service: `SetValidFor(time.Hour)`).
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Lifetime of the short admin token sent with `CreateRoom`.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// The LiveKit API key pair the tokens are signed with (HS256).
#[derive(Debug, Clone)]
pub struct LiveKitKeys {
    pub key: String,
    pub secret: Redacted,
}

impl LiveKitKeys {
    /// A participant token: join `room` as `identity`, publish, subscribe, update own
    /// metadata, never create rooms.
    pub fn join_token(&self, room: &str, identity: &str) -> Result<Redacted, AccessTokenError> {
        let grants = VideoGrants {
            room_join: true,
            room_create: false,
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_update_own_metadata: Some(true),
            room: room.to_owned(),
            ..VideoGrants::default()
        };
        AccessToken::with_api_key(&self.key, self.secret.expose())
            .with_ttl(JOIN_TOKEN_TTL)
            .with_identity(identity)
            .with_grants(grants)
            .to_jwt()
            .map(Redacted::new)
    }

    /// The service's token for `RoomService.CreateRoom`: `video.roomCreate` only.
    pub fn room_create_token(&self) -> Result<Redacted, AccessTokenError> {
        let grants = VideoGrants {
            room_create: true,
            ..VideoGrants::default()
        };
        AccessToken::with_api_key(&self.key, self.secret.expose())
            .with_ttl(ADMIN_TOKEN_TTL)
            .with_grants(grants)
            .to_jwt()
            .map(Redacted::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::TokenVerifier;

    fn keys() -> LiveKitKeys {
        LiveKitKeys {
            key: "devkey".into(),
            secret: Redacted::new("0123456789abcdef0123456789abcdef"),
        }
    }

    #[test]
    fn join_token_carries_identity_room_and_the_real_services_grants() {
        let jwt = keys().join_token("ROOMALIAS", "@u:e:DEV").unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "0123456789abcdef0123456789abcdef")
            .verify(jwt.expose())
            .unwrap();
        assert_eq!(claims.sub, "@u:e:DEV");
        assert_eq!(claims.iss, "devkey");
        assert_eq!(claims.exp - claims.nbf, 3600);
        let v = &claims.video;
        assert!(v.room_join && !v.room_create && !v.room_admin && !v.room_list);
        assert_eq!(v.room, "ROOMALIAS");
        assert_eq!(v.can_publish, Some(true));
        assert_eq!(v.can_subscribe, Some(true));
        assert_eq!(v.can_update_own_metadata, Some(true));
        assert_eq!(v.can_publish_data, None);
    }

    #[test]
    fn join_token_does_not_verify_with_another_secret() {
        let jwt = keys().join_token("R", "I").unwrap();
        assert!(TokenVerifier::with_api_key("devkey", "another-secret")
            .verify(jwt.expose())
            .is_err());
    }

    #[test]
    fn room_create_token_grants_room_create_only() {
        let jwt = keys().room_create_token().unwrap();
        let claims = TokenVerifier::with_api_key("devkey", "0123456789abcdef0123456789abcdef")
            .verify(jwt.expose())
            .unwrap();
        assert!(claims.video.room_create);
        assert!(!claims.video.room_join);
        assert_eq!(claims.video.room, "");
    }
}
