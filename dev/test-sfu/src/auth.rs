//! Access-token checks (LiveKit JWT, HS256) with the HTTP statuses LiveKit answers.
//! Owns key/secret and grant checks; must not log tokens or the secret.

use livekit_api::access_token::{Claims, TokenVerifier};

use crate::room::JoinGrant;

/// Why a request was refused; [`AuthError::status`] is what LiveKit's `rtcservice.go` returns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no access token: send `Authorization: Bearer <jwt>` or `access_token=`")]
    Missing,
    #[error("invalid access token ({0}): mint it with this server's key and secret, not expired")]
    Invalid(String),
    #[error("permissions denied: the token lacks the `{0}` grant")]
    Denied(&'static str),
    #[error("token has no identity (`sub`)")]
    NoIdentity,
    #[error("no room given (grant `video.room` or query `room`)")]
    NoRoom,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid(_) | AuthError::Denied(_) => 401,
            AuthError::NoIdentity | AuthError::NoRoom => 400,
        }
    }
}

/// Verifies tokens minted with the server's API key and secret.
pub struct Auth {
    verifier: TokenVerifier,
}

impl Auth {
    pub fn new(key: &str, secret: &str) -> Self {
        Auth {
            verifier: TokenVerifier::with_api_key(key, secret),
        }
    }

    /// Signature, issuer, `exp`/`nbf` (60 s leeway).
    pub fn claims(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        self.verifier
            .verify(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// A join: needs `video.roomJoin`, an identity and a room (grant wins over `room_query`).
    pub fn join_grant(
        &self,
        token: Option<&str>,
        room_query: Option<&str>,
    ) -> Result<JoinGrant, AuthError> {
        let c = self.claims(token)?;
        if !c.video.room_join {
            return Err(AuthError::Denied("video.roomJoin"));
        }
        if c.sub.is_empty() {
            return Err(AuthError::NoIdentity);
        }
        let room = if c.video.room.is_empty() {
            room_query.unwrap_or_default().to_string()
        } else {
            c.video.room.clone()
        };
        if room.is_empty() {
            return Err(AuthError::NoRoom);
        }
        Ok(JoinGrant {
            identity: c.sub.clone(),
            name: c.name.clone(),
            room,
            metadata: c.metadata.clone(),
            can_publish: c.video.can_publish(),
            can_subscribe: c.video.can_subscribe(),
            can_publish_data: c.video.can_publish_data(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::{AccessToken, VideoGrants};
    use std::time::Duration;

    fn token(grants: VideoGrants, identity: &str) -> String {
        AccessToken::with_api_key("k", "s")
            .with_identity(identity)
            .with_ttl(Duration::from_secs(60))
            .with_grants(grants)
            .to_jwt()
            .unwrap()
    }

    #[test]
    fn statuses_follow_livekit() {
        let auth = Auth::new("k", "s");
        let join = VideoGrants {
            room_join: true,
            room: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            auth.join_grant(Some(&token(join.clone(), "a")), None)
                .unwrap()
                .room,
            "r"
        );
        assert_eq!(auth.join_grant(None, None).unwrap_err().status(), 401);
        assert_eq!(
            auth.join_grant(Some("garbage"), None).unwrap_err().status(),
            401
        );
        let other = AccessToken::with_api_key("k", "other")
            .with_identity("a")
            .with_grants(join.clone())
            .to_jwt()
            .unwrap();
        assert_eq!(
            auth.join_grant(Some(&other), None).unwrap_err().status(),
            401
        );
        let no_join = token(
            VideoGrants {
                room: "r".into(),
                ..Default::default()
            },
            "a",
        );
        assert_eq!(
            auth.join_grant(Some(&no_join), None).unwrap_err().status(),
            401
        );
    }
}
