//! The dev stack as its users see it: a real Synapse with MatrixRTC on free loopback ports,
//! reached through the stack file. Needs a Python with matrix-synapse (`MI_PYTHON`; skipped with
//! a loud message when absent unless `CI=true`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mi_devstack::{DevStack, DevStackOptions, StackInfo};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";

fn options(python: PathBuf) -> DevStackOptions {
    DevStackOptions {
        binary: Some(env!("CARGO_BIN_EXE_mi-devstack").into()),
        python: Some(python),
        ..DevStackOptions::default()
    }
}

async fn call(
    http: &Client,
    method: Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("homeserver reachable");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn token(info: &StackInfo, who: &str) -> String {
    let user = match who {
        "alice" => &info.users.alice,
        "bob" => &info.users.bob,
        _ => unreachable!(),
    };
    user.access_token
        .as_ref()
        .expect("residents have a session")
        .expose()
        .to_owned()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test]
async fn fresh_stack_serves_matrixrtc_to_residents_and_refuses_a_second_start() {
    let Some(python) = mi_devstack::test_python_or_skip("fresh_stack") else {
        return;
    };
    let stack = DevStack::start(options(python.clone())).expect("stack starts");
    let info = stack.info.clone();
    let hs = &info.homeserver_url;
    let http = Client::builder().no_proxy().build().unwrap();
    let alice = token(&info, "alice");

    // MatrixRTC transports and delayed events are advertised.
    let (status, versions) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/versions"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc4143"], true,
        "{versions}"
    );
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc4140"], true,
        "{versions}"
    );
    let transports_url = format!("{hs}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports");
    let (status, transports) = call(&http, Method::GET, transports_url, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK, "{transports}");
    let expected = json!({"type": "livekit", "livekit_service_url": info.token_service_url});
    assert_eq!(transports["rtc_transports"][0], expected);
    let (_, well_known) = call(
        &http,
        Method::GET,
        format!("{hs}/.well-known/matrix/client"),
        None,
        None,
    )
    .await;
    assert_eq!(well_known["org.matrix.msc4143.rtc_foci"][0], expected);

    // The room: everyone joined, everyone may publish call membership and ring.
    let room = &info.room_id;
    assert_eq!(info.room_alias, "#door:localhost");
    let (_, members) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/v3/rooms/{room}/joined_members"),
        Some(&alice),
        None,
    )
    .await;
    for user in [&info.users.alice, &info.users.bob, &info.users.intercom] {
        assert!(
            members["joined"].get(&user.user_id).is_some(),
            "{} not joined: {members}",
            user.user_id
        );
    }
    let (_, pl) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(pl["users_default"], 0, "{pl}");
    assert_eq!(pl["events"][CALL_MEMBER], 0, "{pl}");
    assert_eq!(
        pl["events"]["org.matrix.msc4075.rtc.notification"], 0,
        "{pl}"
    );
    assert!(info.encrypted_room_id.is_none());

    // Alice joins a call the way Element Call does: delayed leave, then membership, then a burst
    // of restarts that default rate limits would refuse.
    let device = info.users.alice.device_id.clone().unwrap();
    let state_key = format!("_{}_{device}_m.call", info.users.alice.user_id);
    let state_url = format!("{hs}/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{state_key}");
    let (status, delayed) = call(
        &http,
        Method::PUT,
        format!("{state_url}?org.matrix.msc4140.delay=10000"),
        Some(&alice),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{delayed}");
    let delay_id = delayed["delay_id"].as_str().expect("delay_id").to_owned();
    let membership = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": device,
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [{"type": "livekit", "livekit_service_url": info.token_service_url, "livekit_alias": room}]});
    let (status, sent) = call(
        &http,
        Method::PUT,
        state_url,
        Some(&alice),
        Some(membership),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    for _ in 0..12 {
        let url = format!(
            "{hs}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/restart"
        );
        let (status, body) = call(&http, Method::POST, url, None, Some(json!({}))).await;
        assert_eq!(status, StatusCode::OK, "restart refused: {body}");
    }

    // The device's password works (it has no session of its own yet).
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": info.users.intercom.user_id}, "password": info.users.intercom.password.expose()});
    let (status, session) = call(
        &http,
        Method::POST,
        format!("{hs}/_matrix/client/v3/login"),
        None,
        Some(login),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{session}");

    // The stack file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(stack.stack_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second stack on the same Synapse port is refused, naming the port and the flag.
    let dir2 = tempfile::tempdir().unwrap();
    let port = hs.rsplit(':').next().unwrap();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_mi-devstack"))
        .arg("--dir")
        .arg(dir2.path())
        .arg("--python")
        .arg(&python)
        .args(["--synapse-port", port])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1")),
        "{stderr}"
    );
    assert!(stderr.contains("--synapse-port"), "{stderr}");
    assert!(!dir2.path().join("stack.json").exists());

    // Stopping ends Synapse and removes the stack file.
    let file = stack.stack_file().to_owned();
    let status = stack.stop().unwrap();
    assert!(status.success(), "{status}");
    wait_gone(info.pids.synapse);
    assert!(!file.exists());
}

#[tokio::test]
async fn a_reused_dir_keeps_accounts_and_room_and_adds_the_encrypted_room() {
    let Some(python) = mi_devstack::test_python_or_skip("reused_dir") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = DevStackOptions {
        dir: Some(dir.path().to_owned()),
        ..options(python)
    };
    let first = DevStack::start(opts.clone()).expect("first start");
    let before = first.info.clone();
    assert!(first.stop().unwrap().success());
    wait_gone(before.pids.synapse);

    let second = DevStack::start(DevStackOptions {
        encrypted_room: true,
        ..opts
    })
    .expect("second start on the same dir");
    let info = second.info.clone();
    assert_eq!(info.room_id, before.room_id);
    assert_eq!(info.users.alice.password, before.users.alice.password);
    assert_eq!(info.users.alice.device_id, before.users.alice.device_id);
    let hs = &info.homeserver_url;
    let http = Client::builder().no_proxy().build().unwrap();
    let bob = token(&info, "bob");
    let (status, whoami) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/v3/account/whoami"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(whoami["user_id"], "@bob:localhost");

    let encrypted = info.encrypted_room_id.clone().expect("encrypted room made");
    assert_eq!(
        info.encrypted_room_alias.as_deref(),
        Some("#door-encrypted:localhost")
    );
    let (status, enc) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/v3/rooms/{encrypted}/state/m.room.encryption"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{enc}");
    assert_eq!(enc["algorithm"], "m.megolm.v1.aes-sha2");
    let (_, pl) = call(
        &http,
        Method::GET,
        format!("{hs}/_matrix/client/v3/rooms/{encrypted}/state/m.room.power_levels"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(pl["events"][CALL_MEMBER], 0, "{pl}");

    // SIGTERM stops the stack cleanly too.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(info.pids.devstack as libc::pid_t, libc::SIGTERM) };
    assert!(second.stop().unwrap().success());
    wait_gone(info.pids.synapse);
}

#[test]
fn a_python_without_synapse_fails_the_start_with_its_output() {
    let bin = tempfile::tempdir().unwrap();
    let python = bin.path().join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho 'No module named synapse' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = DevStack::start(options(python))
        .err()
        .expect("start must fail");
    let text = err.to_string();
    assert!(
        text.contains("Synapse exited during start-up (exit code 1)"),
        "{text}"
    );
    assert!(text.contains("No module named synapse"), "{text}");
}
