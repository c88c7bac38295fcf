//! Helpers shared by this crate's integration tests: tokens and the SFU binary.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, Claims, VideoGrants};

pub const KEY: &str = "devkey";
pub const SECRET: &str = "devsecret-devsecret-devsecret-00";

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mi-test-sfu"))
}

pub fn join_token(identity: &str, room: &str) -> String {
    AccessToken::with_api_key(KEY, SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_ttl(Duration::from_secs(600))
        .with_grants(VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            ..Default::default()
        })
        .to_jwt()
        .expect("token")
}

pub fn admin_token(room: &str) -> String {
    AccessToken::with_api_key(KEY, SECRET)
        .with_identity("admin")
        .with_ttl(Duration::from_secs(600))
        .with_grants(VideoGrants {
            room_create: true,
            room_list: true,
            room_admin: true,
            room: room.into(),
            ..Default::default()
        })
        .to_jwt()
        .expect("token")
}

/// A join token that expired an hour ago (beyond the 60 s leeway), signed correctly.
pub fn expired_token(identity: &str, room: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as usize;
    let mut claims = Claims::from_unverified(&join_token(identity, room)).unwrap();
    claims.exp = now - 3600;
    claims.nbf = now - 7200;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(serde_json::to_vec(&claims).unwrap());
    let signing_input = format!("{header}.{body}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

/// `POST /twirp/livekit.RoomService/<method>` with a JSON body.
pub fn twirp(addr: &str, method: &str, token: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    mi_test_sfu::testkit::http_request(
        addr,
        "POST",
        &format!("/twirp/livekit.RoomService/{method}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("twirp request")
}
