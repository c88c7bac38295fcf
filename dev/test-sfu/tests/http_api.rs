//! Token refusals and the room service, on loopback (no namespaces needed).

mod common;

use common::*;
use mi_test_sfu::testkit::{http_request, Sfu};

fn validate(addr: &str, token: Option<&str>) -> u16 {
    let path = match token {
        Some(t) => format!("/rtc/validate?access_token={t}"),
        None => "/rtc/validate".into(),
    };
    http_request(addr, "GET", &path, &[], b"").unwrap().0
}

/// A WebSocket upgrade on `/rtc` with a bearer token: the status seen before any upgrade.
fn upgrade(addr: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    http_request(addr, "GET", "/rtc?protocol=16", &headers, b"")
        .unwrap()
        .0
}

#[test]
fn tokens_are_refused_with_livekit_statuses() {
    let sfu = Sfu::start(bin(), None, "127.0.0.1", KEY, SECRET, &["--no-auto-create"]).unwrap();
    let addr = sfu.http.trim_start_matches("http://").to_string();

    // The Python SDK probes v1 first and falls back to /rtc on a plain 404.
    let (status, body) = http_request(&addr, "GET", "/rtc/v1", &[], b"").unwrap();
    assert_eq!(status, 404);
    assert!(!body.contains("requested room does not exist"));
    assert_eq!(
        http_request(&addr, "GET", "/rtc/v1/validate", &[], b"")
            .unwrap()
            .0,
        404
    );

    // Room missing while auto-create is off: 404, for validate and for the upgrade.
    let good = join_token("alice", "hall");
    assert_eq!(validate(&addr, Some(&good)), 404);
    assert_eq!(upgrade(&addr, &good), 404);

    let (status, body) = twirp(
        &addr,
        "CreateRoom",
        &admin_token("hall"),
        r#"{"name":"hall"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let room: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(room["name"], "hall");
    assert!(room["sid"].as_str().unwrap().starts_with("RM_"));

    assert_eq!(validate(&addr, Some(&good)), 200);
    assert_eq!(validate(&addr, None), 401);
    assert_eq!(validate(&addr, Some("not.a.jwt")), 401);
    let forged = livekit_api::access_token::AccessToken::with_api_key(KEY, "another-secret")
        .with_identity("mallory")
        .with_grants(livekit_api::access_token::VideoGrants {
            room_join: true,
            room: "hall".into(),
            ..Default::default()
        })
        .to_jwt()
        .unwrap();
    assert_eq!(validate(&addr, Some(&forged)), 401);
    assert_eq!(upgrade(&addr, &forged), 401);
    assert_eq!(validate(&addr, Some(&expired_token("alice", "hall"))), 401);
    assert_eq!(upgrade(&addr, &expired_token("alice", "hall")), 401);
    // A token without the roomJoin grant (an admin token) may not join.
    assert_eq!(validate(&addr, Some(&admin_token("hall"))), 401);
    assert_eq!(upgrade(&addr, &admin_token("hall")), 401);
}

#[test]
fn room_service_checks_grants() {
    let sfu = Sfu::start(bin(), None, "127.0.0.1", KEY, SECRET, &[]).unwrap();
    let addr = sfu.http.trim_start_matches("http://").to_string();
    let join_only = join_token("bob", "r1");
    assert_eq!(
        twirp(&addr, "CreateRoom", &join_only, r#"{"name":"r1"}"#).0,
        401
    );
    assert_eq!(
        twirp(&addr, "CreateRoom", "garbage", r#"{"name":"r1"}"#).0,
        401
    );
    assert_eq!(
        twirp(&addr, "CreateRoom", &admin_token("r1"), r#"{"name":"r1"}"#).0,
        200
    );
    let (status, body) = twirp(&addr, "ListRooms", &admin_token("r1"), "{}");
    assert_eq!(status, 200);
    assert!(body.contains("\"r1\""), "{body}");
    assert_eq!(twirp(&addr, "ListRooms", &join_only, "{}").0, 401);
    let (status, body) = twirp(
        &addr,
        "ListParticipants",
        &admin_token("r1"),
        r#"{"room":"r1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // roomAdmin for another room is not enough.
    assert_eq!(
        twirp(
            &addr,
            "ListParticipants",
            &admin_token("r2"),
            r#"{"room":"r1"}"#
        )
        .0,
        401
    );
    assert_eq!(
        twirp(&addr, "DeleteRoom", &admin_token("r1"), r#"{"room":"r1"}"#).0,
        200
    );
    assert_eq!(
        twirp(&addr, "DeleteRoom", &admin_token("r1"), r#"{"room":"r1"}"#).0,
        404
    );
}
