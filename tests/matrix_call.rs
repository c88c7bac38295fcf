//! The device's call membership against a real Synapse (the dev stack): exactly the content a
//! resident sees, ringing, leaving, crash expiry, keep-alive recovery, residents joining and
//! leaving, expiry, encrypted rooms, missing power level.
//!
//! Needs `cargo build -p mi-devstack` and a Python with matrix-synapse (`MI_PYTHON`); without
//! Python the tests print SKIPPED unless `CI=true`.

mod matrix_support;

use std::time::{Duration, Instant};

use matrix_intercom::matrix::membership::{
    membership_content, state_key, MembershipParams, MEMBERSHIP_EXPIRES_MS,
};
use matrix_intercom::matrix::{session, MatrixError, MatrixEvent, MatrixSide};
use matrix_support::*;
use mi_devstack::{DevStack, DevStackOptions};
use serde_json::{json, Value};

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
