//! The device's LiveKit client against the official LiveKit Python SDK (libwebrtc), through
//! the in-repo test SFU. The SFU and the device client run in one network namespace, the
//! Python peer in another, joined by a veth link (libwebrtc gathers no loopback candidates).
//! Needs root and the Python SDK (MI_PYTHON); skipped loudly otherwise, failed under CI.

mod support;

use std::net::IpAddr;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use matrix_intercom::livekit::{connect, ConnectOptions, LiveKitEvent};
use mi_test_sfu::testkit::{start_peer, LineProcess, NetnsPair, PeerSpec};
use serde_json::Value;
use support::pcm::{RecordingSink, ToneSource};
use support::sfu::{join_token, TestSfu};
use support::tone::longest_tone_run;

const DEVICE: &str = "@door:example.org:DOORDEV";
const PYTHON: &str = "@visitor:example.org:PYDEV";

/// Waits until `n` consecutive one-second tone reports about `from` show the tone clearly.
fn python_hears(p: &mut LineProcess, from: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut run = 0;
    while run < n {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("the Python peer did not hear {from} for {n} s in a row"));
        let line = p
            .wait_line(left, |l| l.contains("\"tone\"") && l.contains(from))
            .unwrap_or_else(|| panic!("no tone report about {from}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        let good = v["ratio"].as_f64().unwrap() > 0.8 && v["level_db"].as_f64().unwrap() > -30.0;
        run = if good { run + 1 } else { 0 };
        p.seen.retain(|l| *l != line);
    }
}

/// What the device saw, reported by its namespace thread.
#[derive(Debug)]
struct DeviceReport {
    longest_1000hz_run: usize,
    decoded: u64,
    repaired: u64,
    python_left: bool,
}

#[test]
fn device_and_python_sdk_hear_each_other_and_see_the_leave() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !NetnsPair::available() {
        assert!(!ci, "this test needs root (network namespaces) under CI");
        eprintln!("!!! SKIPPING device/Python interop: needs root for network namespaces !!!");
        return;
    }
    let Some(python) = mi_test_sfu::testkit::python().expect("python for the SDK peer") else {
        return;
    };
    let net = NetnsPair::new().expect("network namespaces");
    let sfu_ip: IpAddr = net.sfu_ip().parse().unwrap();
    let sfu = TestSfu::start_on(sfu_ip, Some(net.sfu_ns.clone()), true);
    let url = sfu.ws_url();

    let python_token = join_token(PYTHON, "door");
    let mut peer = start_peer(
        &python,
        &net.py_ns,
        &PeerSpec {
            name: "python",
            url: &url,
            token: python_token.expose(),
            tone_hz: 1000,
            expect_hz: 440,
            duration_s: 60,
        },
    )
    .expect("Python peer started");
    let v = peer
        .wait_json(Duration::from_secs(30), |v| {
            v["event"] == "connected" || v["event"] == "error"
        })
        .expect("Python peer reported");
    assert_eq!(v["event"], "connected", "{v}");

    // The device runs in the SFU's namespace on its own runtime until told the peer left.
    let (python_gone_tx, python_gone_rx) = std_mpsc::channel::<()>();
    let (device_heard_tx, device_heard_rx) = std_mpsc::channel::<()>();
    let device_ns = net.sfu_ns.clone();
    let subnet = format!("10.77.{}.0/24", net.subnet);
    let device = std::thread::spawn(move || {
        NetnsPair::run_in(&device_ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sink = RecordingSink::new();
                let heard = sink.recording();
                let opts = ConnectOptions {
                    allowed_remote_nets: Some(vec![subnet.parse().unwrap()]),
                    ..ConnectOptions::default()
                };
                let (call, mut events) = connect(
                    &url,
                    &join_token(DEVICE, "door"),
                    opts,
                    Box::new(ToneSource::new(440.0, 8000)),
                    Box::new(sink),
                )
                .await
                .expect("device joined");
                // Hear the Python peer's 1000 Hz for 5 s (bounded).
                let deadline = Instant::now() + Duration::from_secs(40);
                while longest_tone_run(&heard.lock().unwrap(), 1000.0) < 250
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let longest = longest_tone_run(&heard.lock().unwrap(), 1000.0);
                let stats = call.stats();
                let track = stats
                    .tracks
                    .iter()
                    .find(|t| t.identity.as_deref() == Some(PYTHON))
                    .map(|t| t.stats.decode)
                    .unwrap_or_default();
                device_heard_tx.send(()).ok();
                // Wait for the test to make the peer leave, then for the event.
                let _ = tokio::task::spawn_blocking(move || {
                    python_gone_rx.recv_timeout(Duration::from_secs(90))
                })
                .await;
                let left = tokio::time::timeout(Duration::from_secs(20), async {
                    while let Some(e) = events.recv().await {
                        if e == (LiveKitEvent::ParticipantLeft {
                            identity: PYTHON.into(),
                        }) {
                            return true;
                        }
                    }
                    false
                })
                .await
                .unwrap_or(false);
                call.leave().await;
                DeviceReport {
                    longest_1000hz_run: longest,
                    decoded: track.frames_decoded,
                    repaired: track.frames_concealed + track.frames_fec,
                    python_left: left,
                }
            })
        })
        .expect("device namespace thread")
    });

    peer.wait_json(Duration::from_secs(30), |v| {
        v["event"] == "track_subscribed" && v["identity"] == DEVICE
    })
    .expect("the Python peer subscribed to the device");
    python_hears(&mut peer, DEVICE, 5);

    // Python leaves once the device has measured what it heard (bounded on both sides).
    device_heard_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("device finished listening");
    peer.close_stdin();
    assert!(
        peer.wait_exit(Duration::from_secs(20)),
        "Python peer exited"
    );
    python_gone_tx.send(()).ok();
    let report = device.join().expect("device thread");
    eprintln!("device report: {report:?}");
    assert!(report.longest_1000hz_run >= 250, "{report:?}");
    assert!(report.decoded >= 250, "{report:?}");
    assert!(report.repaired * 50 < report.decoded, "{report:?}");
    assert!(
        report.python_left,
        "no ParticipantLeft for the Python peer: {report:?}"
    );
}
