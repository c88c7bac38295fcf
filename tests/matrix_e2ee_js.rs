//! Media key exchange against the real other side: matrix-js-sdk (npm, Rust crypto) running
//! `MatrixRTCSession` with `manageMediaKeys` exactly as Element Call does (dev/jsrtc), in the
//! dev stack's encrypted room. Checks key bytes and indices on both sides, and the rotation
//! when a third member leaves.
//!
//! Needs: a Python with matrix-synapse (`MI_PYTHON`), `node` (>= 20; or `MI_NODE`) and
//! `dev/jsrtc/node_modules` (`scripts/setup.sh` runs `npm ci` there). Without them the test
//! prints SKIPPED, unless `CI=true`, where that is a failure.

mod matrix_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_intercom::matrix::{MatrixSide, MediaKeyUpdate};
use matrix_support::*;
use mi_devstack::{DevStack, DevStackOptions};
use mi_test_sfu::testkit::LineProcess;
use serde_json::json;
use support::jsrtc;

/// The last key js-sdk member `who` handed its media layer for (user, device).
fn js_key(
    peer: &LineProcess,
    who: &str,
    user: &str,
    device: &str,
) -> Option<(u8, Vec<u8>, String)> {
    jsrtc::last_key(peer, who, user, device).map(|k| (k.index, k.key, k.identity))
}

/// Reads new peer lines for up to `ms` without blocking the runtime.
fn pump(peer: &mut LineProcess, ms: u64) {
    tokio::task::block_in_place(|| {
        peer.wait_line(Duration::from_millis(ms), |l| l.contains("\"error\""));
    });
    if let Some(e) = peer.seen.iter().find(|l| l.contains("\"event\":\"error\"")) {
        panic!("js-sdk peer failed: {e}");
    }
}

type Updates = Arc<Mutex<Vec<MediaKeyUpdate>>>;

fn own_key(updates: &Updates) -> Option<(u8, Vec<u8>)> {
    updates.lock().unwrap().iter().rev().find_map(|u| match u {
        MediaKeyUpdate::Own { index, key } => Some((*index, key.expose().to_vec())),
        _ => None,
    })
}

fn remote_key(updates: &Updates, identity: &str) -> Option<(u8, Vec<u8>)> {
    updates.lock().unwrap().iter().rev().find_map(|u| match u {
        MediaKeyUpdate::Remote {
            identity: i,
            index,
            key,
        } if i == identity => Some((*index, key.expose().to_vec())),
        _ => None,
    })
}

/// Polls (peer lines and device updates) until `check` holds, within `secs`.
fn until(
    peer: &mut LineProcess,
    secs: u64,
    what: &str,
    mut check: impl FnMut(&LineProcess) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !check(peer) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        pump(peer, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keys_flow_both_ways_with_matrix_js_sdk_and_rotate_when_a_member_leaves() {
    let test = "media_keys_flow_both_ways_with_matrix_js_sdk_and_rotate_when_a_member_leaves";
    let Some(python) = mi_devstack::test_python_or_skip(test) else {
        return;
    };
    let Some(node) = jsrtc::node_or_skip(test) else {
        return;
    };
    let stack = DevStack::start(DevStackOptions {
        python: Some(python),
        encrypted_room: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("dev stack: {e}"));
    let info = &stack.info;
    let room = info.encrypted_room_id.clone().expect("encrypted room");
    let (alice, bob) = (&info.users.alice, &info.users.bob);

    // Alice and bob: two js-sdk members in one node process.
    let config = json!({
        "homeserver": info.homeserver_url,
        "room_id": room,
        "livekit_service_url": info.token_service_url,
        "members": [
            {"name": "alice", "user_id": alice.user_id, "password": alice.password.expose()},
            {"name": "bob", "user_id": bob.user_id, "password": bob.password.expose()},
        ],
    });
    let mut peer = jsrtc::spawn(&node, None, &config);
    let mut device_of = |who: &str| {
        tokio::task::block_in_place(|| {
            peer.wait_json(Duration::from_secs(60), |v| {
                v["event"] == "ready" && v["who"] == who
            })
        })
        .unwrap_or_else(|| panic!("js-sdk {who} not ready; lines: {:?}", peer.seen))["device_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let alice_dev = device_of("alice");
    let bob_dev = device_of("bob");
    assert!(peer.send_line(r#"{"cmd": "join", "who": "alice"}"#));
    assert!(peer.send_line(r#"{"cmd": "join", "who": "bob"}"#));
    until(&mut peer, 30, "alice's and bob's own first keys", |p| {
        js_key(p, "alice", &alice.user_id, &alice_dev).is_some()
            && js_key(p, "bob", &bob.user_id, &bob_dev).is_some()
    });

    // The device joins the encrypted room's call.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&stack, dir.path(), true);
    cfg.matrix.room = info.encrypted_room_alias.clone().expect("encrypted room");
    let (side, mut events) = MatrixSide::start(&cfg).await.expect("device starts");
    // Call events are not this test's subject; drained so the sync loop never waits on them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    assert!(side.room_is_encrypted().await);
    let mut rx = side.start_media_keys().await;
    let updates = Updates::default();
    let collected = updates.clone();
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            collected.lock().unwrap().push(u);
        }
    });
    side.join().await.expect("device joins");
    let me = side.rtc_identity();
    let alice_identity = format!("{}:{alice_dev}", alice.user_id);

    // Both ways: the device has alice's current key, alice has the device's.
    until(&mut peer, 45, "keys exchanged both ways", |p| {
        let theirs = js_key(p, "alice", &alice.user_id, &alice_dev);
        let ours = own_key(&updates);
        let alice_has = js_key(p, "alice", side.user_id(), side.device_id());
        theirs.is_some_and(|(i, k, _)| remote_key(&updates, &alice_identity) == Some((i, k)))
            && ours.is_some()
            && alice_has.is_some_and(|(i, k, _)| Some((i, k)) == ours)
    });
    let (alice_index, alice_key, alice_backend_id) =
        js_key(&peer, "alice", &alice.user_id, &alice_dev).unwrap();
    assert_eq!(
        alice_backend_id, alice_identity,
        "the identity js-sdk gives the media layer is the one the device keys by"
    );
    let (_, _, device_backend_id) =
        js_key(&peer, "alice", side.user_id(), side.device_id()).unwrap();
    assert_eq!(
        device_backend_id, me,
        "alice keys the device by its LiveKit identity"
    );
    let (own_index, own) = own_key(&updates).unwrap();
    assert_eq!(own.len(), 16);
    until(&mut peer, 30, "bob has the device's key too", |p| {
        js_key(p, "bob", side.user_id(), side.device_id())
            .is_some_and(|(i, k, _)| (i, k) == (own_index, own.clone()))
    });

    // Bob leaves: alice and the device rotate to index + 1 and exchange the new keys.
    assert!(peer.send_line(r#"{"cmd": "leave", "who": "bob"}"#));
    let next = |i: u8| i.wrapping_add(1);
    until(&mut peer, 45, "both rotated after bob left", |p| {
        let theirs = js_key(p, "alice", &alice.user_id, &alice_dev);
        let ours = own_key(&updates);
        let alice_has = js_key(p, "alice", side.user_id(), side.device_id());
        theirs.is_some_and(|(i, k, _)| {
            i == next(alice_index) && remote_key(&updates, &alice_identity) == Some((i, k))
        }) && ours.as_ref().is_some_and(|(i, _)| *i == next(own_index))
            && alice_has.is_some_and(|(i, k, _)| Some((i, k)) == ours)
    });
    let (_, new_alice_key, _) = js_key(&peer, "alice", &alice.user_id, &alice_dev).unwrap();
    assert_ne!(new_alice_key, alice_key, "alice's rotated key is new");
    assert_ne!(
        own_key(&updates).unwrap().1,
        own,
        "the device's rotated key is new"
    );
    let bob_sees = js_key(&peer, "bob", side.user_id(), side.device_id()).unwrap();
    assert_eq!(
        (bob_sees.0, bob_sees.1),
        (own_index, own),
        "bob, gone, never got the rotated key"
    );

    // Cross-signing set up at the device's login: Element sees a session its owner signed.
    let ask = json!({"cmd": "device_status", "who": "alice",
        "user_id": side.user_id(), "device_id": side.device_id()});
    assert!(peer.send_line(&ask.to_string()));
    let status = tokio::task::block_in_place(|| {
        peer.wait_json(Duration::from_secs(20), |v| v["event"] == "device_status")
    })
    .expect("device status from js-sdk");
    assert_eq!(
        status["signed_by_owner"], true,
        "the device is cross-signed by its account: {status}"
    );

    side.leave().await.expect("device leaves");
    peer.close_stdin();
    assert!(
        tokio::task::block_in_place(|| peer.wait_exit(Duration::from_secs(20))),
        "js-sdk peer exits"
    );
}
