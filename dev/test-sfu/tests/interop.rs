//! The official LiveKit Python SDK against the test SFU, over a veth link between two network
//! namespaces (root needed; Python from MI_PYTHON, see `testkit::python`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mi_test_sfu::testkit::{start_peer, LineProcess, LoopbackRelay, NetnsPair, PeerSpec, Sfu};
use serde_json::Value;

struct Setup {
    python: PathBuf,
    net: NetnsPair,
    sfu: Sfu,
    relay: Option<LoopbackRelay>,
}

/// None = skipped (not root, or no Python outside CI).
fn setup(extra: &[&str]) -> Option<Setup> {
    setup_bound(extra, false)
}

/// With `loopback`, the SFU binds 127.0.0.1 and advertises the veth address, reached through a
/// [`LoopbackRelay`] (the QEMU guest situation); the relay is returned for the caller to keep.
fn setup_bound(extra: &[&str], loopback: bool) -> Option<Setup> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !NetnsPair::available() {
        assert!(!ci, "interop tests need root (network namespaces) under CI");
        eprintln!("!!! SKIPPING: interop tests need root for network namespaces !!!");
        return None;
    }
    let python = mi_test_sfu::testkit::python().expect("python for the SDK peer")?;
    let net = NetnsPair::new().expect("network namespaces");
    let bind = if loopback {
        "127.0.0.1".to_string()
    } else {
        net.sfu_ip()
    };
    let sfu = Sfu::start_with(
        bin(),
        Some(&net.sfu_ns),
        &bind,
        &net.sfu_ip(),
        KEY,
        SECRET,
        extra,
    )
    .expect("SFU started");
    let relay = loopback.then(|| {
        LoopbackRelay::start(&net.sfu_ns, &net.sfu_ip(), sfu.udp.port(), sfu.http_port())
            .expect("relay")
    });
    Some(Setup {
        python,
        net,
        sfu,
        relay,
    })
}

impl Setup {
    fn peer(&self, identity: &str, room: &str, tone: u32, expect: u32) -> LineProcess {
        let url = match self.relay {
            Some(_) => format!("ws://{}:{}", self.net.sfu_ip(), self.sfu.http_port()),
            None => self.sfu.ws_url(),
        };
        let token = join_token(identity, room);
        let spec = PeerSpec {
            name: identity,
            url: &url,
            token: &token,
            tone_hz: tone,
            expect_hz: expect,
            duration_s: 60,
        };
        start_peer(&self.python, &self.net.py_ns, &spec).expect("peer started")
    }

    fn twirp(&self, method: &'static str, room: &str, body: String) -> (u16, String) {
        let addr = format!("{}:{}", self.net.sfu_ip(), self.sfu.http_port());
        let token = admin_token(room);
        NetnsPair::run_in(&self.net.py_ns, move || twirp(&addr, method, &token, &body))
            .expect("in namespace")
    }
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == name
}

fn connected(p: &mut LineProcess) {
    let v = p
        .wait_json(Duration::from_secs(30), |v| {
            v["event"] == "connected" || v["event"] == "error"
        })
        .expect("peer reported connected");
    assert_eq!(v["event"], "connected", "{v}");
}

/// Wait until `n` consecutive one-second tone reports from `from` show the expected tone.
fn hears(p: &mut LineProcess, from: &'static str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut run = 0;
    while run < n {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("did not hear {from} for {n} s in a row"));
        let line = p
            .wait_line(left, |l| l.contains("\"tone\"") && l.contains(from))
            .unwrap_or_else(|| panic!("no tone report about {from}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        let good = v["ratio"].as_f64().unwrap() > 0.8 && v["level_db"].as_f64().unwrap() > -30.0;
        run = if good { run + 1 } else { 0 };
        // Consumed: drop it so the next wait sees the next report.
        p.seen.retain(|l| *l != line);
    }
}

#[test]
fn two_sdk_peers_hear_each_other_and_see_a_leave() {
    let Some(s) = setup(&[]) else { return };
    let mut a = s.peer("alice", "call", 440, 1000);
    let mut b = s.peer("bob", "call", 1000, 440);
    connected(&mut a);
    connected(&mut b);
    a.wait_json(Duration::from_secs(30), |v| {
        v["event"] == "track_subscribed" && v["identity"] == "bob"
    })
    .expect("alice subscribed to bob");
    b.wait_json(Duration::from_secs(30), |v| {
        v["event"] == "track_subscribed" && v["identity"] == "alice"
    })
    .expect("bob subscribed to alice");
    hears(&mut a, "bob", 5);
    hears(&mut b, "alice", 5);

    let (status, body) = s.twirp("ListParticipants", "call", r#"{"room":"call"}"#.into());
    assert_eq!(status, 200);
    assert!(body.contains("alice") && body.contains("bob"), "{body}");

    a.close_stdin();
    let gone = b
        .wait_json(Duration::from_secs(20), event("participant_disconnected"))
        .expect("bob saw alice leave");
    assert_eq!(gone["identity"], "alice");
    assert_eq!(gone["reason"], "CLIENT_INITIATED");
    assert!(a.wait_exit(Duration::from_secs(20)), "alice exited");
}

#[test]
fn delete_room_disconnects_everyone_with_room_deleted() {
    let Some(s) = setup(&["--no-auto-create"]) else {
        return;
    };
    let (status, _) = s.twirp("CreateRoom", "doomed", r#"{"name":"doomed"}"#.into());
    assert_eq!(status, 200);
    let mut a = s.peer("carol", "doomed", 440, 1000);
    let mut b = s.peer("dave", "doomed", 1000, 440);
    connected(&mut a);
    connected(&mut b);
    let (status, body) = s.twirp("DeleteRoom", "doomed", r#"{"room":"doomed"}"#.into());
    assert_eq!(status, 200, "{body}");
    for p in [&mut a, &mut b] {
        let v = p
            .wait_json(Duration::from_secs(20), event("disconnected"))
            .expect("peer disconnected");
        assert_eq!(v["reason"], "ROOM_DELETED");
    }
}

#[test]
fn sigterm_tells_participants_server_shutdown() {
    let Some(mut s) = setup(&[]) else { return };
    let mut a = s.peer("erin", "late", 440, 1000);
    connected(&mut a);
    s.sfu.process.terminate();
    let v = a
        .wait_json(Duration::from_secs(20), event("disconnected"))
        .expect("peer disconnected");
    assert_eq!(v["reason"], "SERVER_SHUTDOWN");
    assert!(
        s.sfu.process.wait_exit(Duration::from_secs(10)),
        "SFU exited"
    );
}

#[test]
fn sdk_peers_resume_after_their_signalling_connections_vanish() {
    let Some(s) = setup(&[]) else { return };
    let mut a = s.peer("frank", "resume", 440, 1000);
    let mut b = s.peer("grace", "resume", 1000, 440);
    connected(&mut a);
    connected(&mut b);
    hears(&mut a, "grace", 2);
    hears(&mut b, "frank", 2);

    NetnsPair::kill_tcp(&s.net.py_ns, &s.net.sfu_ip(), s.sfu.http_port()).expect("ss -K");
    for p in [&mut a, &mut b] {
        p.wait_json(Duration::from_secs(30), event("reconnected"))
            .expect("peer resumed");
        // Only tone reports from after the resume count below.
        p.seen.retain(|l| !l.contains("\"tone\""));
    }
    hears(&mut a, "grace", 3);
    hears(&mut b, "frank", 3);
    for p in [&a, &b] {
        assert!(
            !p.seen
                .iter()
                .any(|l| l.contains("participant_disconnected") || l.contains("\"disconnected\"")),
            "a resume is not a leave: {:?}",
            p.seen
        );
    }
}

#[test]
fn sfu_bound_to_loopback_advertising_another_address_works() {
    // Like a QEMU guest reaching the host's loopback as 10.0.2.2: every client arrives from
    // 127.0.0.1 while the candidate names the veth address.
    let Some(s) = setup_bound(&[], true) else {
        return;
    };
    let mut a = s.peer("heidi", "qemu", 440, 1000);
    let mut b = s.peer("ivan", "qemu", 1000, 440);
    connected(&mut a);
    connected(&mut b);
    hears(&mut a, "ivan", 5);
    hears(&mut b, "heidi", 5);
}
