//! The Matrix side against a real Synapse (the dev stack): the device's call membership as a
//! resident sees it, ringing, leaving, crash expiry, residents joining and leaving, session
//! reuse and corruption, and no secret in a TRACE log.
//!
//! Needs `cargo build -p mi-devstack` (plus `-p mi-token-service -p mi-test-sfu` for the grant
//! check) and a Python with matrix-synapse (`MI_PYTHON`); without Python the tests print
//! SKIPPED unless `CI=true`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_intercom::config::Config;
use matrix_intercom::matrix::membership::{
    membership_content, state_key, MembershipParams, MEMBERSHIP_EXPIRES_MS,
};
use matrix_intercom::matrix::{session, MatrixError, MatrixEvent, MatrixSide, SessionError};
use mi_devstack::{DevStack, DevStackHandle, DevStackOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";

fn stack(test: &str) -> Option<DevStackHandle> {
    let python = mi_devstack::test_python_or_skip(test)?;
    let opts = DevStackOptions {
        python: Some(python),
        ..Default::default()
    };
    Some(DevStack::start(opts).unwrap_or_else(|e| panic!("dev stack: {e}")))
}

fn device_config(stack: &DevStackHandle, state_dir: &Path, with_password: bool) -> Config {
    let info = &stack.info;
    let mut text = format!(
        "[matrix]\nhomeserver = {:?}\nuser_id = {:?}\nroom = {:?}\nstate_dir = {:?}\n",
        info.homeserver_url,
        info.users.intercom.user_id,
        info.room_alias,
        state_dir.display().to_string(),
    );
    if with_password {
        text.push_str(&format!(
            "password = {:?}\n",
            info.users.intercom.password.expose()
        ));
    }
    toml::from_str(&text).expect("test config parses")
}

/// A client speaking plain HTTP with an access token (a resident, or the device's own token
/// to look at its delayed events).
struct Http {
    http: reqwest::Client,
    base: String,
    token: String,
    user_id: String,
    device_id: String,
}

impl Http {
    fn alice(stack: &DevStackHandle) -> Self {
        let u = &stack.info.users.alice;
        Self {
            http: reqwest::Client::new(),
            base: stack.info.homeserver_url.clone(),
            token: u
                .access_token
                .as_ref()
                .expect("alice has a session")
                .expose()
                .to_owned(),
            user_id: u.user_id.clone(),
            device_id: u.device_id.clone().expect("alice has a device"),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("homeserver reachable");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// All state events of the room.
    async fn state(&self, room: &str) -> Vec<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/state"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    async fn membership_of(&self, room: &str, key: &str) -> Option<Value> {
        self.state(room)
            .await
            .into_iter()
            .find(|e| e["type"] == CALL_MEMBER && e["state_key"] == key)
    }

    async fn put_membership(&self, room: &str, content: Value) {
        let key = state_key(&self.user_id, &self.device_id);
        let (status, v) = self
            .call(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{key}"),
                Some(content),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }

    async fn recent_events(&self, room: &str) -> Vec<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["chunk"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `check` every 250 ms until it returns `Some` or `within` passes.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for an event matching `want`, returning everything received up to it.
async fn expect_event(
    rx: &mut mpsc::Receiver<MatrixEvent>,
    within: Duration,
    want: impl Fn(&MatrixEvent) -> bool,
) -> Vec<MatrixEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                let hit = want(&e);
                seen.push(e);
                if hit {
                    return seen;
                }
            }
            Ok(None) => panic!("event channel closed; got {seen:?}"),
            Err(_) => panic!("timed out after {within:?}; got {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_sees_exact_membership_and_ring_then_leave_empties_it() {
    let Some(stack) = stack("resident_sees_exact_membership_and_ring_then_leave_empties_it") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    let room = stack.info.room_id.clone();
    assert_eq!(side.room_id(), room, "alias resolved to the room id");
    side.join().await.expect("join");

    let alice = Http::alice(&stack);
    let key = state_key(side.user_id(), side.device_id());
    assert_eq!(
        key,
        format!(
            "_{}_{}_m.call",
            stack.info.users.intercom.user_id,
            side.device_id()
        )
    );
    let ev = eventually(
        Duration::from_secs(10),
        "the device's membership",
        || async {
            alice
                .membership_of(&room, &key)
                .await
                .filter(|e| e["content"] != json!({}))
        },
    )
    .await;
    let expected = membership_content(
        &MembershipParams {
            user_id: side.user_id().into(),
            device_id: side.device_id().into(),
            room_id: room.clone(),
            livekit_service_url: stack.info.token_service_url.clone(),
        },
        None,
        MEMBERSHIP_EXPIRES_MS,
    );
    assert_eq!(
        ev["content"], expected,
        "membership content exactly as Element Call's"
    );
    assert_eq!(ev["sender"], json!(stack.info.users.intercom.user_id));
    let member_event_id = ev["event_id"].as_str().unwrap().to_owned();

    let ring = eventually(Duration::from_secs(10), "the ring notification", || async {
        alice
            .recent_events(&room)
            .await
            .into_iter()
            .find(|e| e["type"] == "org.matrix.msc4075.rtc.notification")
    })
    .await;
    assert_eq!(ring["content"]["notification_type"], "ring");
    assert_eq!(ring["content"]["m.relates_to"]["rel_type"], "m.reference");
    assert_eq!(
        ring["content"]["m.relates_to"]["event_id"],
        json!(member_event_id)
    );
    assert_eq!(
        ring["content"]["m.mentions"],
        json!({"user_ids": [], "room": true})
    );

    side.leave().await.expect("leave");
    eventually(
        Duration::from_secs(10),
        "the membership to be emptied",
        || async {
            alice
                .membership_of(&room, &key)
                .await
                .filter(|e| e["content"] == json!({}))
        },
    )
    .await;
    assert!(matches!(side.leave().await, Err(MatrixError::NotJoined)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_outlives_the_delay_while_alive_and_expires_after_a_crash() {
    let Some(stack) = stack("membership_outlives_the_delay_while_alive_and_expires_after_a_crash")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, rx) = MatrixSide::start(&cfg).await.expect("device starts");
    side.join().await.expect("join");
    let room = stack.info.room_id.clone();
    let key = state_key(side.user_id(), side.device_id());
    let alice = Http::alice(&stack);
    let present = |e: &Option<Value>| e.as_ref().is_some_and(|e| e["content"] != json!({}));
    eventually(Duration::from_secs(10), "the membership", || async {
        present(&alice.membership_of(&room, &key).await).then_some(())
    })
    .await;
    // The keep-alive restarts the 10 s delayed leave: the membership outlives it by far.
    let alive_until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < alive_until {
        assert!(
            present(&alice.membership_of(&room, &key).await),
            "membership vanished while the device was alive"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Crash: no leave; the keep-alive stops with the side.
    let crashed = Instant::now();
    drop(side);
    drop(rx);
    eventually(
        Duration::from_secs(15),
        "the delayed leave after the crash",
        || async { (!present(&alice.membership_of(&room, &key).await)).then_some(()) },
    )
    .await;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "emptied after {took:?}: too soon for a 10 s delay restarted every 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_sees_residents_join_and_leave_and_the_call_end() {
    let Some(stack) = stack("device_sees_residents_join_and_leave_and_the_call_end") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, mut rx) = MatrixSide::start(&cfg).await.expect("device starts");
    let room = stack.info.room_id.clone();
    let alice = Http::alice(&stack);
    let alice_content = json!({
        "application": "m.call", "call_id": "", "scope": "m.room", "device_id": alice.device_id,
        "expires": 14400000,
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [{"type": "livekit", "livekit_service_url": stack.info.token_service_url,
                            "livekit_alias": room}],
    });
    // Alice starts a call while the device is idle: an incoming call.
    alice.put_membership(&room, alice_content).await;
    let seen = expect_event(&mut rx, Duration::from_secs(15), |e| {
        *e == MatrixEvent::IncomingCall
    })
    .await;
    assert!(
        seen.contains(&MatrixEvent::MemberJoined {
            user_id: alice.user_id.clone(),
            device_id: alice.device_id.clone()
        }),
        "{seen:?}"
    );
    assert_eq!(side.members().len(), 1);

    // The device answers (no ring: it is not first), then alice leaves: the call is over.
    side.join().await.expect("join");
    eventually(
        Duration::from_secs(10),
        "own membership in the member list",
        || async { (side.members().len() == 2).then_some(()) },
    )
    .await;
    let events = alice.recent_events(&room).await;
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "org.matrix.msc4075.rtc.notification"),
        "the device must not ring when someone is already in the call"
    );
    alice.put_membership(&room, json!({})).await;
    let seen = expect_event(&mut rx, Duration::from_secs(15), |e| {
        *e == MatrixEvent::CallEnded
    })
    .await;
    assert!(
        seen.contains(&MatrixEvent::MemberLeft {
            user_id: alice.user_id.clone(),
            device_id: alice.device_id.clone()
        }),
        "{seen:?}"
    );

    // A resident writes "open" in the room: a door-open request naming her.
    let (status, v) = alice
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/open-1"),
            Some(json!({"msgtype": "m.text", "body": "open"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let seen = expect_event(&mut rx, Duration::from_secs(15), |e| {
        matches!(e, MatrixEvent::DoorOpenRequest { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&MatrixEvent::DoorOpenRequest {
            user_id: alice.user_id.clone()
        })
    );
    side.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_membership_leaves_without_any_new_event() {
    let Some(stack) = stack("an_expiring_membership_leaves_without_any_new_event") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, mut rx) = MatrixSide::start(&cfg).await.expect("device starts");
    let room = stack.info.room_id.clone();
    let alice = Http::alice(&stack);
    // A membership that expires 4 s after it was sent (a crashed client without delayed events).
    alice
        .put_membership(
            &room,
            json!({
                "application": "m.call", "call_id": "", "scope": "m.room",
                "device_id": alice.device_id, "expires": 4000,
                "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
                "foci_preferred": [{"type": "livekit",
                    "livekit_service_url": stack.info.token_service_url, "livekit_alias": room}],
            }),
        )
        .await;
    let sent = Instant::now();
    expect_event(&mut rx, Duration::from_secs(10), |e| {
        *e == MatrixEvent::IncomingCall
    })
    .await;
    let seen = expect_event(&mut rx, Duration::from_secs(15), |e| {
        *e == MatrixEvent::IncomingCallGone
    })
    .await;
    assert!(
        seen.contains(&MatrixEvent::MemberLeft {
            user_id: alice.user_id.clone(),
            device_id: alice.device_id.clone()
        }),
        "{seen:?}"
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(3500),
        "gone after {took:?}, before it expired"
    );
    assert!(side.members().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_without_call_permission_says_which_power_level_is_missing() {
    let Some(stack) = stack("join_without_call_permission_says_which_power_level_is_missing")
    else {
        return;
    };
    let room = stack.info.room_id.clone();
    let alice = Http::alice(&stack);
    let pl_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    let (status, mut pl) = alice.call(reqwest::Method::GET, &pl_path, None).await;
    assert_eq!(status, 200, "{pl}");
    pl["events"][CALL_MEMBER] = json!(50);
    let (status, v) = alice.call(reqwest::Method::PUT, &pl_path, Some(pl)).await;
    assert_eq!(status, 200, "{v}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    let err = side.join().await.expect_err("no permission to join");
    assert!(
        matches!(err, MatrixError::NoCallPermission { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(CALL_MEMBER), "{err}");
    // Nothing half-done: no membership from the device.
    let key = state_key(side.user_id(), side.device_id());
    assert_eq!(alice.membership_of(&room, &key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_the_device_and_a_corrupted_session_is_kept_aside() {
    let Some(stack) = stack("restart_reuses_the_device_and_a_corrupted_session_is_kept_aside")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), true))
        .await
        .expect("first start logs in");
    let device = side.device_id().to_owned();
    drop(side);
    assert!(session::session_exists(dir.path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(session::session_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Second start without a password: the stored session, same device.
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), false))
        .await
        .expect("restart from the stored session");
    assert_eq!(side.device_id(), device);
    drop(side);

    // Corrupt the file: a clear error, the bytes kept aside, nothing overwritten.
    let path = session::session_path(dir.path());
    std::fs::write(&path, b"{\"homeserver\": oops").unwrap();
    let err = match MatrixSide::start(&device_config(&stack, dir.path(), true)).await {
        Err(e) => e,
        Ok(_) => panic!("a corrupted session must not start"),
    };
    let MatrixError::Session(SessionError::Corrupt { moved_to, .. }) = &err else {
        panic!("expected a corrupt-session error, got {err}");
    };
    assert_eq!(std::fs::read(moved_to).unwrap(), b"{\"homeserver\": oops");
    assert!(!path.exists());

    // A fresh login, then logout revokes it: the old token no longer works.
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), true))
        .await
        .expect("fresh login after the corrupt file");
    drop(side);
    let stored = session::load(dir.path()).unwrap().unwrap();
    matrix_intercom::matrix::logout(&device_config(&stack, dir.path(), false))
        .await
        .expect("logout");
    assert!(!session::session_exists(dir.path()));
    let whoami = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v3/account/whoami",
            stack.info.homeserver_url
        ))
        .bearer_auth(stored.access_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status().as_u16(), 401);

    // `login` twice: the second login logs the first device out, the new one works.
    let cfg = device_config(&stack, dir.path(), false);
    let password = stack.info.users.intercom.password.expose();
    let first = matrix_intercom::matrix::login_interactive(&cfg, password)
        .await
        .expect("login");
    let second = matrix_intercom::matrix::login_interactive(&cfg, password)
        .await
        .expect("login again");
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(session::load(dir.path()).unwrap(), Some(second.clone()));
    let status_of = |token: String| {
        let url = format!(
            "{}/_matrix/client/v3/account/whoami",
            stack.info.homeserver_url
        );
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_of(first.access_token.expose().to_owned()).await, 401);
    assert_eq!(
        status_of(second.access_token.expose().to_owned()).await,
        200
    );
}

/// The device's delayed events, as the homeserver lists them.
async fn delayed_events(me: &Http) -> Vec<Value> {
    let (status, v) = me
        .call(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["delayed_events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reschedules_a_lost_delayed_leave_and_rejoins_a_removed_membership() {
    let Some(stack) =
        stack("keep_alive_reschedules_a_lost_delayed_leave_and_rejoins_a_removed_membership")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    side.join().await.expect("join");
    let stored = session::load(dir.path()).unwrap().unwrap();
    let me = Http {
        http: reqwest::Client::new(),
        base: stack.info.homeserver_url.clone(),
        token: stored.access_token.expose().to_owned(),
        user_id: side.user_id().to_owned(),
        device_id: side.device_id().to_owned(),
    };
    let room = stack.info.room_id.clone();
    let key = state_key(side.user_id(), side.device_id());

    // The server forgets the delayed leave (cancelled behind the device's back): the next
    // restart gets M_NOT_FOUND and a new delayed leave is scheduled.
    let before = delayed_events(&me).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let old_id = before[0]["delay_id"].as_str().unwrap().to_owned();
    let (status, v) = me
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{old_id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    eventually(Duration::from_secs(12), "a new delayed leave", || async {
        let now = delayed_events(&me).await;
        (now.len() == 1 && now[0]["delay_id"] != json!(old_id)).then_some(())
    })
    .await;

    // A room admin empties the device's membership: the device joins again.
    let alice = Http::alice(&stack);
    let present = |e: &Option<Value>| e.as_ref().is_some_and(|e| e["content"] != json!({}));
    eventually(Duration::from_secs(10), "the membership", || async {
        present(&alice.membership_of(&room, &key).await).then_some(())
    })
    .await;
    let (status, v) = alice
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{key}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    eventually(Duration::from_secs(20), "the device to re-join", || async {
        alice
            .membership_of(&room, &key)
            .await
            .filter(|e| e["content"] != json!({}) && e["sender"] == json!(side.user_id()))
    })
    .await;
    side.leave().await.expect("leave");
}

/// A loopback TCP proxy to the homeserver that can be cut (open connections dropped, new ones
/// refused) and restored.
struct Proxy {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, up_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    continue; // dropped: connection refused in effect
                }
                let mut down = up_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { url, up, task }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_homeserver_is_reported_and_so_is_its_return() {
    let Some(stack) = stack("losing_the_homeserver_is_reported_and_so_is_its_return") else {
        return;
    };
    let proxy = Proxy::start(&stack.info.homeserver_url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&stack, dir.path(), true);
    cfg.matrix.homeserver = proxy.url.clone();
    let (side, mut rx) = MatrixSide::start(&cfg).await.expect("device starts");
    proxy.set_up(false);
    expect_event(&mut rx, Duration::from_secs(60), |e| {
        *e == MatrixEvent::ConnectionLost
    })
    .await;
    assert!(
        session::session_exists(dir.path()),
        "session kept while offline"
    );
    proxy.set_up(true);
    expect_event(&mut rx, Duration::from_secs(60), |e| {
        *e == MatrixEvent::ConnectionBack
    })
    .await;
    drop(side);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_rings_in_an_encrypted_room() {
    let Some(python) = mi_devstack::test_python_or_skip("joins_and_rings_in_an_encrypted_room")
    else {
        return;
    };
    let stack = DevStack::start(DevStackOptions {
        python: Some(python),
        encrypted_room: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("dev stack: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&stack, dir.path(), true);
    cfg.matrix.room = stack
        .info
        .encrypted_room_alias
        .clone()
        .expect("encrypted room requested");
    let room = stack.info.encrypted_room_id.clone().unwrap();
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    assert!(side.room_is_encrypted().await);
    side.join().await.expect("join");
    let alice = Http::alice(&stack);
    let key = state_key(side.user_id(), side.device_id());
    eventually(
        Duration::from_secs(10),
        "the membership (state is not encrypted)",
        || async {
            alice
                .membership_of(&room, &key)
                .await
                .filter(|e| e["content"]["application"] == "m.call")
        },
    )
    .await;
    // The ring goes out encrypted, from the device.
    eventually(Duration::from_secs(15), "the encrypted ring", || async {
        alice
            .recent_events(&room)
            .await
            .into_iter()
            .find(|e| e["type"] == "m.room.encrypted" && e["sender"] == json!(side.user_id()))
    })
    .await;
    side.leave().await.expect("leave");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_jwt_or_delay_id_in_a_trace_log() {
    let Some(stack) = stack("no_token_jwt_or_delay_id_in_a_trace_log") else {
        return;
    };
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    side.join().await.expect("join");
    let stored = session::load(dir.path()).unwrap().unwrap();
    // The delay id, as the homeserver lists it for the device.
    let me = Http {
        http: reqwest::Client::new(),
        base: stack.info.homeserver_url.clone(),
        token: stored.access_token.expose().to_owned(),
        user_id: side.user_id().to_owned(),
        device_id: side.device_id().to_owned(),
    };
    let (status, delayed) = me
        .call(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await;
    assert_eq!(status, 200, "{delayed}");
    let delay_ids: Vec<String> = delayed["delayed_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["delay_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(delay_ids.len(), 1, "one delayed leave scheduled: {delayed}");

    let grant = if stack.info.pids.token_service.is_some() && stack.info.pids.sfu.is_some() {
        let g = side.rtc_grant().await.expect("token service grants a JWT");
        assert_eq!(g.livekit_url, stack.info.livekit.url);
        assert_eq!(
            g.identity,
            format!("{}:{}", side.user_id(), side.device_id())
        );
        Some(g)
    } else {
        eprintln!("NOTE: no token service + SFU in the dev stack; rtc_grant not exercised");
        None
    };
    // Wait until a keep-alive restart has run (it carries the delay id in its URL): the
    // delayed event's `running_since` moves forward.
    let first_since = delayed["delayed_events"][0]["running_since"].as_u64();
    assert!(first_since.is_some(), "{delayed}");
    eventually(Duration::from_secs(10), "a keep-alive restart", || async {
        let (_, v) = me
            .call(
                reqwest::Method::GET,
                "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
                None,
            )
            .await;
        (v["delayed_events"][0]["running_since"].as_u64() > first_since).then_some(())
    })
    .await;
    side.leave().await.expect("leave");
    drop(side);

    let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    assert!(log.len() > 1000, "the TRACE log should not be empty");
    assert!(
        !log.contains(stored.access_token.expose()),
        "access token in the log"
    );
    if let Some(r) = &stored.refresh_token {
        assert!(!log.contains(r.expose()), "refresh token in the log");
    }
    assert!(
        !log.contains(stack.info.users.intercom.password.expose()),
        "password in the log"
    );
    for id in &delay_ids {
        assert!(!log.contains(id.as_str()), "delay id in the log");
    }
    if let Some(g) = grant {
        assert!(!log.contains(g.jwt.expose()), "JWT in the log");
    }
}
