//! The endpoints as a client sees them, called through `Service::handle` (no socket for the
//! service itself); the homeserver and SFU are fakes on 127.0.0.1.

mod support;

use hyper::Method;
use livekit_api::access_token::{Claims, TokenVerifier};
use mi_token_service::config::FullAccess;
use mi_token_service::{Reply, Service};
use serde_json::{json, Value};
use support::{config, fake_homeserver, fake_sfu, query_param, Fake, KEY, LIVEKIT_URL, SECRET};

const ALICE_TOKEN: &str = "openid-token-of-alice";

fn openid(token: &str) -> Value {
    json!({"access_token": token, "token_type": "Bearer",
           "matrix_server_name": "example.com", "expires_in": 3600})
}

fn legacy_body(token: &str) -> Value {
    json!({"room": "!roomid:example.com", "openid_token": openid(token), "device_id": "DEVICE1"})
}

fn get_token_body(token: &str, claimed_user: &str) -> Value {
    json!({"room_id": "!roomid:example.com", "slot_id": "slot1234", "openid_token": openid(token),
           "member": {"id": "memberABC", "claimed_user_id": claimed_user,
                      "claimed_device_id": "DEVICE123"}})
}

async fn alice_homeserver() -> Fake {
    fake_homeserver(&[(ALICE_TOKEN, "@alice:example.com")]).await
}

async fn post(service: &Service, path: &str, body: &Value) -> Reply {
    service
        .handle(&Method::POST, path, body.to_string().as_bytes())
        .await
}

/// Asserts a Matrix error answer and returns its message.
fn assert_error(reply: &Reply, status: u16, errcode: &str) -> String {
    assert_eq!(
        reply.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let body: Value = serde_json::from_slice(&reply.body).expect("error body is JSON");
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 2, "exactly errcode and error: {body}");
    assert_eq!(body["errcode"], errcode);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    body["error"].as_str().unwrap().to_owned()
}

/// Asserts a token answer, verifies the JWT and returns its claims.
fn assert_token(reply: &Reply) -> Claims {
    assert_eq!(
        reply.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "exactly url and jwt: {body}"
    );
    assert_eq!(body["url"], LIVEKIT_URL);
    let claims = TokenVerifier::with_api_key(KEY, SECRET)
        .verify(body["jwt"].as_str().unwrap())
        .expect("JWT verifies with the LiveKit key pair");
    assert_eq!(claims.iss, KEY);
    assert_eq!(claims.exp - claims.nbf, 3600, "1 h lifetime");
    let v = &claims.video;
    assert!(v.room_join, "roomJoin");
    assert!(!v.room_create, "roomCreate false");
    assert!(!v.room_admin && !v.room_list && !v.room_record && !v.hidden);
    assert_eq!(v.can_publish, Some(true));
    assert_eq!(v.can_subscribe, Some(true));
    assert_eq!(v.can_update_own_metadata, Some(true));
    claims
}

#[tokio::test]
async fn sfu_get_returns_a_jwt_for_user_colon_device_in_the_m_call_room() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let claims = assert_token(&post(&service, "/sfu/get", &legacy_body(ALICE_TOKEN)).await);
    assert_eq!(claims.sub, "@alice:example.com:DEVICE1");
    assert_eq!(
        claims.video.room,
        "F4oOprKFBq6JHqy2qYpq6UQQmR7hCvxkQQoUrd0+SbI"
    );

    let seen = hs.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]
        .path_and_query
        .starts_with("/_matrix/federation/v1/openid/userinfo?"));
    assert_eq!(
        query_param(&seen[0], "access_token").as_deref(),
        Some(ALICE_TOKEN)
    );
}

#[tokio::test]
async fn get_token_returns_a_jwt_for_the_hashed_member_identity_and_slot_room() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let reply = post(
        &service,
        "/get_token",
        &get_token_body(ALICE_TOKEN, "@alice:example.com"),
    )
    .await;
    let claims = assert_token(&reply);
    assert_eq!(claims.sub, "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU");
    assert_eq!(
        claims.video.room,
        "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
    );
}

#[tokio::test]
async fn empty_device_id_gives_identity_ending_in_a_colon() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let mut body = legacy_body(ALICE_TOKEN);
    body.as_object_mut().unwrap().remove("device_id");
    assert_eq!(
        assert_token(&post(&service, "/sfu/get", &body).await).sub,
        "@alice:example.com:"
    );
}

#[tokio::test]
async fn tampered_openid_token_is_401() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let tampered = format!("{ALICE_TOKEN}x");
    assert_error(
        &post(&service, "/sfu/get", &legacy_body(&tampered)).await,
        401,
        "M_UNAUTHORIZED",
    );
    assert_error(
        &post(
            &service,
            "/get_token",
            &get_token_body(&tampered, "@alice:example.com"),
        )
        .await,
        401,
        "M_UNAUTHORIZED",
    );
    assert_eq!(
        hs.requests().len(),
        2,
        "both were checked at the homeserver"
    );
}

#[tokio::test]
async fn claimed_user_other_than_the_verified_user_is_401() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let reply = post(
        &service,
        "/get_token",
        &get_token_body(ALICE_TOKEN, "@bob:example.com"),
    )
    .await;
    assert_error(&reply, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn homeserver_vouching_for_another_servers_user_is_401() {
    let hs = fake_homeserver(&[(ALICE_TOKEN, "@alice:evil.org")]).await;
    let service = Service::new(config(&hs)).unwrap();
    assert_error(
        &post(&service, "/sfu/get", &legacy_body(ALICE_TOKEN)).await,
        401,
        "M_UNAUTHORIZED",
    );
    let reply = post(
        &service,
        "/get_token",
        &get_token_body(ALICE_TOKEN, "@alice:evil.org"),
    )
    .await;
    assert_error(&reply, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn unreachable_homeserver_is_401() {
    let hs = alice_homeserver().await;
    let mut cfg = config(&hs);
    // A port nobody listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    cfg.homeservers
        .insert("example.com".into(), reqwest::Url::parse(&url).unwrap());
    let service = Service::new(cfg).unwrap();
    assert_error(
        &post(&service, "/sfu/get", &legacy_body(ALICE_TOKEN)).await,
        401,
        "M_UNAUTHORIZED",
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_never_reach_the_homeserver() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    let raw = |path: &'static str, body: &'static str| {
        let service = &service;
        async move { service.handle(&Method::POST, path, body.as_bytes()).await }
    };
    for path in ["/sfu/get", "/get_token"] {
        assert_error(&raw(path, "").await, 400, "M_NOT_JSON");
        assert_error(&raw(path, "room=!r:e").await, 400, "M_NOT_JSON");
        assert_error(&raw(path, "[1,2]").await, 400, "M_NOT_JSON");
        assert_error(&raw(path, "{}").await, 400, "M_BAD_JSON");
    }

    let mut unknown_top = legacy_body(ALICE_TOKEN);
    unknown_top["extra"] = json!(true);
    let mut unknown_in_openid = legacy_body(ALICE_TOKEN);
    unknown_in_openid["openid_token"]["scope"] = json!("x");
    let mut unknown_in_member = get_token_body(ALICE_TOKEN, "@alice:example.com");
    unknown_in_member["member"]["device_id"] = json!("D");
    let mut wrong_type = legacy_body(ALICE_TOKEN);
    wrong_type["openid_token"]["expires_in"] = json!("3600");
    for (path, body) in [
        ("/sfu/get", &unknown_top),
        ("/sfu/get", &unknown_in_openid),
        ("/get_token", &unknown_in_member),
        ("/sfu/get", &wrong_type),
    ] {
        assert_error(&post(&service, path, body).await, 400, "M_NOT_JSON");
    }

    let mut no_room = legacy_body(ALICE_TOKEN);
    no_room.as_object_mut().unwrap().remove("room");
    let mut no_server = legacy_body(ALICE_TOKEN);
    no_server["openid_token"]
        .as_object_mut()
        .unwrap()
        .remove("matrix_server_name");
    let mut no_member_id = get_token_body(ALICE_TOKEN, "@alice:example.com");
    no_member_id["member"].as_object_mut().unwrap().remove("id");
    let mut no_slot = get_token_body(ALICE_TOKEN, "@alice:example.com");
    no_slot.as_object_mut().unwrap().remove("slot_id");
    let mut half_delay = legacy_body(ALICE_TOKEN);
    half_delay["delay_id"] = json!("syd_abc");
    let mut other_half = get_token_body(ALICE_TOKEN, "@alice:example.com");
    other_half["delay_timeout"] = json!(10000);
    for (path, body) in [
        ("/sfu/get", &no_room),
        ("/sfu/get", &no_server),
        ("/get_token", &no_member_id),
        ("/get_token", &no_slot),
        ("/sfu/get", &half_delay),
        ("/get_token", &other_half),
    ] {
        assert_error(&post(&service, path, body).await, 400, "M_BAD_JSON");
    }
    assert!(
        hs.requests().is_empty(),
        "no OpenID lookup for a bad request"
    );
}

#[tokio::test]
async fn methods_options_health_and_unknown_paths() {
    let hs = alice_homeserver().await;
    let service = Service::new(config(&hs)).unwrap();
    for path in ["/sfu/get", "/get_token"] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let reply = service.handle(&method, path, b"").await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert!(reply.body.is_empty());
        }
        let reply = service.handle(&Method::OPTIONS, path, b"").await;
        assert_eq!(reply.status, 200);
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert_eq!(reply.header("access-control-allow-methods"), Some("POST"));
        assert!(reply
            .header("access-control-allow-headers")
            .unwrap()
            .contains("Content-Type"));
    }
    assert_eq!(
        service.handle(&Method::GET, "/healthz", b"").await.status,
        200
    );
    assert_eq!(
        service.handle(&Method::HEAD, "/healthz", b"").await.status,
        200
    );
    assert_eq!(
        service.handle(&Method::POST, "/healthz", b"").await.status,
        405
    );
    for path in ["/", "/sfu/get/", "/delegate_delayed_leave", "/sfu_webhook"] {
        assert_eq!(service.handle(&Method::POST, path, b"{}").await.status, 404);
    }
    assert!(hs.requests().is_empty());
}

#[tokio::test]
async fn delayed_leave_delegation_is_refused_like_the_real_service() {
    let hs = alice_homeserver().await;
    let mut body = legacy_body(ALICE_TOKEN);
    body["delay_id"] = json!("syd_abc");
    body["delay_timeout"] = json!(10000);

    let mut restricted = config(&hs);
    restricted.full_access = FullAccess::Only(vec!["other.org".into()]);
    let service = Service::new(restricted).unwrap();
    let message = assert_error(&post(&service, "/sfu/get", &body).await, 400, "M_BAD_JSON");
    assert!(message.contains("only supported for full access users"));

    let service = Service::new(config(&hs)).unwrap();
    let message = assert_error(&post(&service, "/sfu/get", &body).await, 400, "M_BAD_JSON");
    assert_eq!(message, "Unable to resolve client-server API");
}

#[tokio::test]
async fn full_access_users_get_the_room_created_on_the_sfu() {
    let hs = alice_homeserver().await;
    let sfu = fake_sfu(200).await;
    let mut cfg = config(&hs);
    cfg.sfu_admin_url = Some(reqwest::Url::parse(&sfu.url()).unwrap());
    let service = Service::new(cfg).unwrap();
    let claims = assert_token(&post(&service, "/sfu/get", &legacy_body(ALICE_TOKEN)).await);

    let seen = sfu.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path_and_query,
        "/twirp/livekit.RoomService/CreateRoom"
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({"name": claims.video.room, "empty_timeout": 300, "departure_timeout": 20})
    );
    let bearer = seen[0]
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("Bearer token");
    let admin = TokenVerifier::with_api_key(KEY, SECRET)
        .verify(bearer)
        .expect("admin token verifies");
    assert!(admin.video.room_create);
    assert!(!admin.video.room_join);
}

#[tokio::test]
async fn restricted_users_only_join_existing_rooms() {
    let hs = alice_homeserver().await;
    let sfu = fake_sfu(200).await;
    let mut cfg = config(&hs);
    cfg.sfu_admin_url = Some(reqwest::Url::parse(&sfu.url()).unwrap());
    cfg.full_access = FullAccess::Only(vec!["other.org".into()]);
    let service = Service::new(cfg).unwrap();
    let reply = post(
        &service,
        "/get_token",
        &get_token_body(ALICE_TOKEN, "@alice:example.com"),
    )
    .await;
    assert_token(&reply);
    assert!(
        sfu.requests().is_empty(),
        "no CreateRoom for a restricted user"
    );
}

#[tokio::test]
async fn failed_room_creation_is_500() {
    let hs = alice_homeserver().await;
    let sfu = fake_sfu(500).await;
    let mut cfg = config(&hs);
    cfg.sfu_admin_url = Some(reqwest::Url::parse(&sfu.url()).unwrap());
    let service = Service::new(cfg).unwrap();
    let message = assert_error(
        &post(&service, "/sfu/get", &legacy_body(ALICE_TOKEN)).await,
        500,
        "M_UNKNOWN",
    );
    assert_eq!(message, "Unable to create room on SFU");
    assert_eq!(sfu.requests().len(), 1);
}
