//! The service over real HTTP on 127.0.0.1: the in-process server and the binary.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use livekit_api::access_token::TokenVerifier;
use mi_token_service::{Server, Service};
use serde_json::{json, Value};
use support::{config, fake_homeserver, KEY, SECRET};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);
const OPENID_TOKEN: &str = "openid-token-9f3c2a7e";

/// Starts the server on an ephemeral loopback port; dropping the sender stops it.
async fn start(service: Service) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), service)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop, task)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

#[tokio::test]
async fn token_cors_and_errors_on_the_wire() {
    let hs = fake_homeserver(&[("tok", "@bot:example.com")]).await;
    let (base, stop, task) = start(Service::new(config(&hs)).unwrap()).await;
    let http = client();

    let body = json!({"room": "!roomid:example.com", "device_id": "DEVICEID",
        "openid_token": {"access_token": "tok", "token_type": "Bearer",
                         "matrix_server_name": "example.com", "expires_in": 3600}});
    let res = http
        .post(format!("{base}/sfu/get"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let answer: Value = res.json().await.unwrap();
    let claims = TokenVerifier::with_api_key(KEY, SECRET)
        .verify(answer["jwt"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.sub, "@bot:example.com:DEVICEID");

    let res = http
        .request(reqwest::Method::OPTIONS, format!("{base}/get_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert_eq!(res.headers()["access-control-allow-methods"], "POST");

    let res = http.get(format!("{base}/sfu/get")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.bytes().await.unwrap().is_empty());

    let res = http
        .post(format!("{base}/sfu/get"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["errcode"], "M_NOT_JSON");

    let huge = vec![b' '; mi_token_service::server::MAX_BODY + 1];
    let res = http
        .post(format!("{base}/get_token"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    drop(stop);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("server stops when told")
        .unwrap();
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "nothing listens after the stop"
    );
}

#[tokio::test]
async fn server_refuses_to_bind_a_non_loopback_address() {
    let hs = fake_homeserver(&[]).await;
    let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let err = Server::bind(addr, Service::new(config(&hs)).unwrap())
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mi-token-service"));
    cmd.env_remove("LIVEKIT_KEY")
        .env_remove("LIVEKIT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn binary_announces_its_address_serves_and_stops_on_sigterm() {
    let hs = fake_homeserver(&[(OPENID_TOKEN, "@bot:example.com")]).await;
    let mut child = binary()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--livekit-url",
            "ws://127.0.0.1:7880",
        ])
        .args(["--homeserver", &format!("example.com={}", hs.url())])
        .arg("--allow-insecure-loopback")
        .env("LIVEKIT_KEY", KEY)
        .env("LIVEKIT_SECRET", SECRET)
        // The most verbose logging still must not show the OpenID token or the JWT.
        .env("RUST_LOG", "trace")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("ready line within the deadline")
        .unwrap()
        .expect("a line on stdout");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let http = client();
    let res = http
        .post(format!("{base}/get_token"))
        .json(
            &json!({"room_id": "!roomid:example.com", "slot_id": "m.call#ROOM",
            "openid_token": {"access_token": OPENID_TOKEN, "token_type": "Bearer",
                             "matrix_server_name": "example.com", "expires_in": 3600},
            "member": {"id": "m1", "claimed_user_id": "@bot:example.com",
                       "claimed_device_id": "DEV"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["url"], "ws://127.0.0.1:7880");
    let jwt = answer["jwt"].as_str().unwrap().to_owned();
    let claims = TokenVerifier::with_api_key(KEY, SECRET)
        .verify(&jwt)
        .unwrap();
    assert_eq!(
        claims.video.room,
        "F4oOprKFBq6JHqy2qYpq6UQQmR7hCvxkQQoUrd0+SbI"
    );

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits within the deadline after SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit, got {status}");

    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("issued LiveKit token"), "log: {stderr}");
    assert!(!stderr.contains(&jwt), "the JWT must not be logged");
    assert!(
        !stderr.contains(OPENID_TOKEN),
        "the OpenID token must not be logged"
    );
    assert!(!stderr.contains(SECRET));
}

#[tokio::test]
async fn binary_refuses_unsafe_flags() {
    for args in [
        vec!["--listen", "0.0.0.0:0"],
        vec![
            "--listen",
            "127.0.0.1:0",
            "--homeserver",
            "e.com=http://127.0.0.1:8008",
        ],
        vec![
            "--listen",
            "127.0.0.1:0",
            "--homeserver",
            "e.com=http://10.0.0.1:8008",
            "--allow-insecure-loopback",
        ],
    ] {
        let out = tokio::time::timeout(
            DEADLINE,
            binary()
                .args(&args)
                .args([
                    "--livekit-url",
                    "ws://x",
                    "--livekit-key",
                    "k",
                    "--livekit-secret",
                    "s",
                ])
                .output(),
        )
        .await
        .expect("exits")
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "no ready line for {args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[tokio::test]
async fn binary_needs_the_livekit_secret() {
    let out = tokio::time::timeout(
        DEADLINE,
        binary()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--livekit-url",
                "ws://x",
                "--livekit-key",
                "k",
            ])
            .output(),
    )
    .await
    .expect("exits")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("livekit-secret"), "{stderr}");
}
