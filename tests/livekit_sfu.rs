//! The device's LiveKit client against the in-repo test SFU on 127.0.0.1: two clients
//! exchange distinct tones, see each other leave, and are told when the room is deleted.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use matrix_intercom::livekit::{
    connect, split_identity, ConnectOptions, DisconnectReason, E2eeKeys, LiveKitCall, LiveKitError,
    LiveKitEvent,
};
use matrix_intercom::secret::Secret;
use support::pcm::{RecordingSink, ToneSource};
use support::proxy::TcpProxy;
use support::relay::LossyRelay;
use support::sfu::{join_token, TestSfu};
use support::tone::{longest_tone_run, recent_tone_fraction};
use tokio::sync::mpsc::Receiver;

/// Tests of this file run one at a time: each runs real-time audio for several clients, and
/// running them side by side on a 2-core machine makes packets late for reasons of the test
/// machine, not of the client.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 5 s of 20 ms frames.
const FIVE_SECONDS: usize = 250;

struct Party {
    call: LiveKitCall,
    events: Receiver<LiveKitEvent>,
    heard: std::sync::Arc<std::sync::Mutex<Vec<i16>>>,
}

fn loopback_only() -> ConnectOptions {
    ConnectOptions {
        allowed_remote_nets: Some(vec!["127.0.0.0/8".parse().unwrap()]),
        ..ConnectOptions::default()
    }
}

async fn join(sfu: &TestSfu, identity: &str, room: &str, tone_hz: f64) -> Party {
    let sink = RecordingSink::new();
    let heard = sink.recording();
    let (call, events) = connect(
        &sfu.ws_url(),
        &join_token(identity, room),
        loopback_only(),
        Box::new(ToneSource::new(tone_hz, 8000)),
        Box::new(sink),
    )
    .await
    .expect("joined the test SFU");
    Party {
        call,
        events,
        heard,
    }
}

/// Waits (bounded) for an event matching `pred`, skipping others.
async fn wait_event(
    events: &mut Receiver<LiveKitEvent>,
    within: Duration,
    pred: impl Fn(&LiveKitEvent) -> bool,
) -> LiveKitEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no matching event within {within:?}"),
        }
    }
}

/// Waits (bounded) for the end of the call and checks its reason.
async fn wait_disconnected(party: &mut Party, reason: DisconnectReason) {
    let ended = wait_event(&mut party.events, Duration::from_secs(20), |e| {
        matches!(e, LiveKitEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(ended, LiveKitEvent::Disconnected { reason });
}

/// Waits (bounded) until `party` has heard `freq` for 5 s without a break.
async fn wait_heard(party: &Party, freq: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let run = longest_tone_run(&party.heard.lock().unwrap(), freq);
        if run >= FIVE_SECONDS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "heard {freq} Hz for only {run} frames in a row; stats: {:?}",
            party.call.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_clean_audio_from(party: &Party, identity: &str) {
    let stats = party.call.stats();
    assert!(stats.packets_sent > FIVE_SECONDS as u64, "{stats:?}");
    let track = stats
        .tracks
        .iter()
        .find(|t| t.identity.as_deref() == Some(identity))
        .unwrap_or_else(|| panic!("no track from {identity}: {stats:?}"));
    let d = track.stats.decode;
    let repaired = d.frames_concealed + d.frames_fec;
    assert!(d.frames_decoded >= FIVE_SECONDS as u64, "{stats:?}");
    assert!(
        repaired * 50 < d.frames_decoded,
        "more than 2 % of frames concealed: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_hear_each_other_and_see_the_leave() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let mut alice = join(&sfu, "@alice:example.org:ALICEDEV", "door", 440.0).await;
    let bob = join(&sfu, "@bob:example.org:BOBDEV", "door", 1000.0).await;

    let joined = wait_event(&mut alice.events, Duration::from_secs(10), |e| {
        matches!(e, LiveKitEvent::ParticipantJoined { .. })
    })
    .await;
    let LiveKitEvent::ParticipantJoined { identity } = joined else {
        unreachable!()
    };
    assert_eq!(
        split_identity(&identity),
        Some(("@bob:example.org", "BOBDEV"))
    );

    wait_heard(&alice, 1000.0, Duration::from_secs(40)).await;
    wait_heard(&bob, 440.0, Duration::from_secs(20)).await;
    // Each hears only the other, never its own tone.
    assert_eq!(longest_tone_run(&alice.heard.lock().unwrap(), 440.0), 0);
    assert_eq!(longest_tone_run(&bob.heard.lock().unwrap(), 1000.0), 0);
    assert_clean_audio_from(&alice, "@bob:example.org:BOBDEV");
    assert_clean_audio_from(&bob, "@alice:example.org:ALICEDEV");
    assert!(alice
        .call
        .participants()
        .iter()
        .any(|p| p.identity == "@bob:example.org:BOBDEV" && p.sid.starts_with("PA_")));

    bob.call.leave().await;
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::ParticipantLeft {
            identity: "@bob:example.org:BOBDEV".into(),
        }
    })
    .await;
    assert!(alice.call.participants().is_empty());
    alice.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_room_ends_the_call_with_room_deleted() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let mut carol = join(&sfu, "@carol:example.org:CAROLDEV", "doomed", 440.0).await;
    // Wait until media flows so the room is fully set up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while carol.call.stats().packets_sent == 0 {
        assert!(Instant::now() < deadline, "no packet sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sfu_ref = &sfu;
    let (status, body) = tokio::task::block_in_place(|| {
        sfu_ref.twirp("DeleteRoom", "doomed", r#"{"room":"doomed"}"#)
    });
    assert_eq!(status, 200, "{body}");
    wait_disconnected(&mut carol, DisconnectReason::RoomDeleted).await;
    // The call is over: leaving now is harmless.
    carol.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_is_refused_with_a_signalling_error() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let forged = Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl");
    let result = connect(
        &sfu.ws_url(),
        &forged,
        loopback_only(),
        Box::new(ToneSource::new(440.0, 8000)),
        Box::new(RecordingSink::new()),
    )
    .await;
    match result {
        Err(LiveKitError::Signal(msg)) => assert!(!msg.contains("c2lnbmF0dXJl"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a forged token was accepted"),
    }
}

async fn join_via(url: &str, identity: &str, room: &str, tone_hz: f64) -> Party {
    let sink = RecordingSink::new();
    let heard = sink.recording();
    let (call, events) = connect(
        url,
        &join_token(identity, room),
        loopback_only(),
        Box::new(ToneSource::new(tone_hz, 8000)),
        Box::new(sink),
    )
    .await
    .expect("joined through the proxy");
    Party {
        call,
        events,
        heard,
    }
}

/// Waits (bounded) until `party` hears `freq` for `frames` frames in a row in the audio
/// recorded after sample `from`.
async fn wait_heard_after(party: &Party, from: usize, freq: f64, frames: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let run = {
            let heard = party.heard.lock().unwrap();
            longest_tone_run(&heard[from.min(heard.len())..], freq)
        };
        if run >= frames {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after recovery heard {freq} Hz for only {run} frames; stats: {:?}",
            party.call.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_signalling_is_resumed_and_audio_continues() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let proxy = TcpProxy::start(sfu.http).await;
    let mut alice = join_via(
        &proxy.ws_url(),
        "@alice:example.org:ALICEDEV",
        "door",
        440.0,
    )
    .await;
    let mut bob = join(&sfu, "@bob:example.org:BOBDEV", "door", 1000.0).await;
    wait_heard_after(&alice, 0, 1000.0, 50, Duration::from_secs(30)).await;
    let alice_seen_by_bob = bob.call.participants();
    assert_eq!(alice_seen_by_bob.len(), 1);

    proxy.cut();
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::Reconnecting
    })
    .await;
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::Reconnected
    })
    .await;
    let mark_alice = alice.heard.lock().unwrap().len();
    let mark_bob = bob.heard.lock().unwrap().len();
    wait_heard_after(&alice, mark_alice, 1000.0, 100, Duration::from_secs(20)).await;
    wait_heard_after(&bob, mark_bob, 440.0, 100, Duration::from_secs(20)).await;
    // Same session: bob still sees alice under her first participant sid, and never saw her leave.
    assert_eq!(bob.call.participants(), alice_seen_by_bob);
    while let Ok(e) = bob.events.try_recv() {
        assert!(!matches!(e, LiveKitEvent::ParticipantLeft { .. }), "{e:?}");
    }
    assert_eq!(alice.call.participants().len(), 1);
    alice.call.leave().await;
    bob.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resume_falls_back_to_a_full_rejoin() {
    let _serial = SERIAL.lock().await;
    // Alice is alone on the first SFU; the link drops and her resume reaches a second SFU
    // that does not know her (as after a server restart): STATE_MISMATCH → full rejoin.
    let first = TestSfu::start(true);
    let second = TestSfu::start(true);
    let proxy = TcpProxy::start(first.http).await;
    let mut alice = join_via(
        &proxy.ws_url(),
        "@alice:example.org:ALICEDEV",
        "door",
        440.0,
    )
    .await;
    let bob = join(&second, "@bob:example.org:BOBDEV", "door", 1000.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.call.stats().packets_sent == 0 {
        assert!(Instant::now() < deadline, "alice sent nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.retarget(second.http);
    proxy.cut();
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::Reconnecting
    })
    .await;
    wait_event(&mut alice.events, Duration::from_secs(30), |e| {
        *e == (LiveKitEvent::ParticipantJoined {
            identity: "@bob:example.org:BOBDEV".into(),
        })
    })
    .await;
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::Reconnected
    })
    .await;
    wait_heard_after(&alice, 0, 1000.0, 100, Duration::from_secs(20)).await;
    wait_heard_after(&bob, 0, 440.0, 100, Duration::from_secs(20)).await;
    alice.call.leave().await;
    bob.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_sfu_is_rejoined_without_help() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let (http, udp) = (sfu.http, sfu.udp);
    let mut alice = join(&sfu, "@alice:example.org:ALICEDEV", "door", 440.0).await;
    let mut bob = join(&sfu, "@bob:example.org:BOBDEV", "door", 1000.0).await;
    wait_heard_after(&alice, 0, 1000.0, 50, Duration::from_secs(30)).await;

    // The server dies without a word; both clients notice and keep trying.
    sfu.kill();
    for party in [&mut alice, &mut bob] {
        wait_event(&mut party.events, Duration::from_secs(20), |e| {
            *e == LiveKitEvent::Reconnecting
        })
        .await;
    }
    // It comes back on the same address, knowing nobody: each client joins again by itself.
    let _sfu = TestSfu::restart_at(http, udp, true);
    for party in [&mut alice, &mut bob] {
        wait_event(&mut party.events, Duration::from_secs(40), |e| {
            *e == LiveKitEvent::Reconnected
        })
        .await;
    }
    let mark_alice = alice.heard.lock().unwrap().len();
    let mark_bob = bob.heard.lock().unwrap().len();
    wait_heard_after(&alice, mark_alice, 1000.0, 100, Duration::from_secs(30)).await;
    wait_heard_after(&bob, mark_bob, 440.0, 100, Duration::from_secs(30)).await;
    assert_eq!(alice.call.participants().len(), 1);
    assert_eq!(bob.call.participants().len(), 1);
    alice.call.leave().await;
    bob.call.leave().await;
}

async fn join_e2ee(sfu: &TestSfu, identity: &str, tone_hz: f64, keys: E2eeKeys) -> Party {
    let sink = RecordingSink::new();
    let heard = sink.recording();
    let opts = ConnectOptions {
        e2ee: Some(keys),
        ..loopback_only()
    };
    let (call, events) = connect(
        &sfu.ws_url(),
        &join_token(identity, "secret"),
        opts,
        Box::new(ToneSource::new(tone_hz, 8000)),
        Box::new(sink),
    )
    .await
    .expect("joined");
    Party {
        call,
        events,
        heard,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_media_is_heard_only_with_the_senders_key() {
    let _serial = SERIAL.lock().await;
    const ALICE: &str = "@alice:example.org:ALICEDEV";
    const BOB: &str = "@bob:example.org:BOBDEV";
    const EVE: &str = "@eve:example.org:EVEDEV";
    let (alice_key, bob_key) = (*b"alice-media-key!", *b"bob-media-key-16");
    let alice_keys = E2eeKeys::new();
    alice_keys.set_local_key(0, &alice_key);
    alice_keys.set_remote_key(BOB, 0, &bob_key);
    let bob_keys = E2eeKeys::new();
    bob_keys.set_local_key(0, &bob_key);
    bob_keys.set_remote_key(ALICE, 0, &alice_key);
    // Eve has bob's key only.
    let eve_keys = E2eeKeys::new();
    eve_keys.set_local_key(0, b"eve-media-key-16");
    eve_keys.set_remote_key(BOB, 0, &bob_key);

    let sfu = TestSfu::start(true);
    let alice = join_e2ee(&sfu, ALICE, 440.0, alice_keys).await;
    let bob = join_e2ee(&sfu, BOB, 1000.0, bob_keys).await;
    let eve = join_e2ee(&sfu, EVE, 700.0, eve_keys).await;

    wait_heard(&alice, 1000.0, Duration::from_secs(40)).await;
    wait_heard(&bob, 440.0, Duration::from_secs(20)).await;
    wait_heard(&eve, 1000.0, Duration::from_secs(20)).await;
    assert_clean_audio_from(&alice, BOB);
    assert_clean_audio_from(&bob, ALICE);
    // Eve receives alice's packets but cannot decrypt them: never a trace of 440 Hz.
    assert_eq!(longest_tone_run(&eve.heard.lock().unwrap(), 440.0), 0);
    let stats = eve.call.stats();
    let from_alice = stats
        .tracks
        .iter()
        .find(|t| t.identity.as_deref() == Some(ALICE))
        .expect("eve subscribed to alice");
    assert!(from_alice.stats.undecryptable > 100, "{stats:?}");
    assert_eq!(from_alice.stats.decode.frames_decoded, 0, "{stats:?}");
    for p in [alice, bob, eve] {
        p.call.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_downstream_loss_is_repaired_by_fec() {
    let _serial = SERIAL.lock().await;
    // The SFU on 127.0.0.1 advertises 127.0.0.2, where a relay drops every 10th RTP packet
    // it delivers to the clients.
    let relay_ip = IpAddr::from([127, 0, 0, 2]);
    let sfu = TestSfu::start_advertising(IpAddr::from([127, 0, 0, 1]), Some(relay_ip), None, true);
    let relay = LossyRelay::start(
        SocketAddr::new(relay_ip, sfu.udp.port()),
        sfu.udp,
        IpAddr::from([127, 0, 0, 3]),
        10,
    )
    .await;
    let alice = join(&sfu, "@alice:example.org:ALICEDEV", "lossy", 440.0).await;
    let bob = join(&sfu, "@bob:example.org:BOBDEV", "lossy", 1000.0).await;
    // With 10 % loss every loss is a single one, repaired from the next packet's FEC. Opus
    // FEC is a low-rate speech copy: a repaired frame of a pure test tone is too noisy for the
    // detector, so expect the tone in at least 85 % of 5 s (90 % arrive intact).
    for party in [&alice, &bob] {
        let freq = if std::ptr::eq(party, &alice) {
            1000.0
        } else {
            440.0
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let fraction = recent_tone_fraction(&party.heard.lock().unwrap(), freq, FIVE_SECONDS);
            if fraction >= 0.85 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{freq} Hz in only {fraction:.2} of the last 5 s: {:?}",
                party.call.stats()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(relay.dropped.load(std::sync::atomic::Ordering::Relaxed) > 20);
    let stats = alice.call.stats();
    let d = stats.tracks[0].stats.decode;
    assert!(
        d.frames_fec * 20 > d.frames_decoded,
        "little FEC: {stats:?}"
    );
    assert!(
        d.frames_concealed * 50 < d.frames_decoded,
        "FEC should leave little to PLC: {stats:?}"
    );
    alice.call.leave().await;
    bob.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_ends_the_call_with_server_shutdown() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let mut dave = join(&sfu, "@dave:example.org:DAVEDEV", "closing", 440.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while dave.call.stats().packets_sent == 0 {
        assert!(Instant::now() < deadline, "no packet sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| sfu.shutdown());
    wait_disconnected(&mut dave, DisconnectReason::ServerShutdown).await;
    dave.call.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_is_prompt_while_the_sfu_is_unreachable() {
    let _serial = SERIAL.lock().await;
    let sfu = TestSfu::start(true);
    let proxy = TcpProxy::start(sfu.http).await;
    let mut alice = join_via(
        &proxy.ws_url(),
        "@alice:example.org:ALICEDEV",
        "door",
        440.0,
    )
    .await;
    // Every later connection attempt is refused (nothing listens on port 1).
    proxy.retarget("127.0.0.1:1".parse().unwrap());
    proxy.cut();
    wait_event(&mut alice.events, Duration::from_secs(20), |e| {
        *e == LiveKitEvent::Reconnecting
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), alice.call.leave())
        .await
        .expect("leave returned while reconnecting");
}
