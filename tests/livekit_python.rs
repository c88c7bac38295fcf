//! The device's LiveKit client against the official LiveKit Python SDK (libwebrtc), through
//! the in-repo test SFU. The SFU and the device client run in one network namespace, the
//! Python peer in another, joined by a veth link (libwebrtc gathers no loopback candidates).
//! Needs root and the Python SDK (MI_PYTHON); skipped loudly otherwise, failed under CI.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use matrix_intercom::livekit::{connect, ConnectOptions, E2eeKeys, LiveKitEvent};
use mi_test_sfu::testkit::{start_peer, LineProcess, NetnsPair, PeerSpec};
use serde_json::Value;
use support::pcm::{RecordingSink, ToneSource};
use support::sfu::{join_token, TestSfu};
use support::tone::longest_tone_run;

const DEVICE: &str = "@door:example.org:DOORDEV";
const PYTHON: &str = "@visitor:example.org:PYDEV";

/// How long the device waits to hear 5 s of the peer's tone.
const DEVICE_LISTENS: Duration = Duration::from_secs(40);

/// The interop tests run one at a time (two real-time libwebrtc peers side by side on a
/// 2-core machine measure the machine, not the client).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Root and Python, or `None` (skip, loudly; a failure under CI).
fn interop_setup() -> Option<(PathBuf, NetnsPair)> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !NetnsPair::available() {
        assert!(!ci, "this test needs root (network namespaces) under CI");
        eprintln!("!!! SKIPPING device/Python interop: needs root for network namespaces !!!");
        return None;
    }
    let python = mi_test_sfu::testkit::python().expect("python for the SDK peer")?;
    Some((python, NetnsPair::new().expect("network namespaces")))
}

fn connected(peer: &mut LineProcess) {
    let v = peer
        .wait_json(Duration::from_secs(30), |v| {
            v["event"] == "connected" || v["event"] == "error"
        })
        .expect("Python peer reported");
    assert_eq!(v["event"], "connected", "{v}");
}

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
    /// Loudest sample the device played.
    peak: i16,
    decoded: u64,
    repaired: u64,
    undecryptable: u64,
    python_left: bool,
}

/// The device in the SFU's namespace on its own runtime: joins, listens for the Python peer's
/// 1000 Hz (bounded), signals `heard`, waits for `gone`, then for the peer's leave event.
#[allow(clippy::too_many_arguments)]
fn spawn_device(
    ns: String,
    url: String,
    subnet: String,
    e2ee: Option<E2eeKeys>,
    listen: Duration,
    heard_tx: std_mpsc::Sender<()>,
    gone_rx: std_mpsc::Receiver<()>,
) -> std::thread::JoinHandle<DeviceReport> {
    std::thread::spawn(move || {
        NetnsPair::run_in(&ns, move || {
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
                    e2ee,
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
                let deadline = Instant::now() + listen;
                while longest_tone_run(&heard.lock().unwrap(), 1000.0) < 250
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let longest = longest_tone_run(&heard.lock().unwrap(), 1000.0);
                let peak = heard
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| s.saturating_abs())
                    .max()
                    .unwrap_or(0);
                let stats = call.stats();
                let track = stats
                    .tracks
                    .iter()
                    .find(|t| t.identity.as_deref() == Some(PYTHON))
                    .map(|t| t.stats.clone());
                heard_tx.send(()).ok();
                let _ = tokio::task::spawn_blocking(move || {
                    gone_rx.recv_timeout(Duration::from_secs(90))
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
                let decode = track.as_ref().map(|t| t.decode).unwrap_or_default();
                DeviceReport {
                    longest_1000hz_run: longest,
                    peak,
                    decoded: decode.frames_decoded,
                    repaired: decode.frames_concealed + decode.frames_fec,
                    undecryptable: track.map_or(0, |t| t.undecryptable),
                    python_left: left,
                }
            })
        })
        .expect("device namespace thread")
    })
}

/// Runs one device/Python exchange: `python` starts the peer given the SFU URL; the device
/// listens (up to `listen`) for the peer's tone; then `python_heard` checks what the peer
/// reported while both are still in the call.
fn exchange(
    net: &NetnsPair,
    e2ee: Option<E2eeKeys>,
    listen: Duration,
    python: impl FnOnce(&str) -> LineProcess,
    python_heard: impl FnOnce(&mut LineProcess),
) -> DeviceReport {
    let sfu_ip: IpAddr = net.sfu_ip().parse().unwrap();
    let sfu = TestSfu::start_on(sfu_ip, Some(net.sfu_ns.clone()), true);
    let url = sfu.ws_url();
    let mut peer = python(&url);
    connected(&mut peer);

    let (gone_tx, gone_rx) = std_mpsc::channel::<()>();
    let (heard_tx, heard_rx) = std_mpsc::channel::<()>();
    let device = spawn_device(
        net.sfu_ns.clone(),
        url,
        format!("10.77.{}.0/24", net.subnet),
        e2ee,
        listen,
        heard_tx,
        gone_rx,
    );
    peer.wait_json(Duration::from_secs(30), |v| {
        v["event"] == "track_subscribed" && v["identity"] == DEVICE
    })
    .expect("the Python peer subscribed to the device");
    // Python leaves once the device has measured what it heard (bounded on both sides).
    heard_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("device finished listening");
    python_heard(&mut peer);
    peer.close_stdin();
    assert!(
        peer.wait_exit(Duration::from_secs(20)),
        "Python peer exited"
    );
    gone_tx.send(()).ok();
    let report = device.join().expect("device thread");
    eprintln!("device report: {report:?}");
    report
}

fn assert_heard_cleanly(report: &DeviceReport) {
    assert!(report.longest_1000hz_run >= 250, "{report:?}");
    assert!(report.decoded >= 250, "{report:?}");
    assert!(report.repaired * 50 < report.decoded, "{report:?}");
    assert!(
        report.python_left,
        "no ParticipantLeft for the Python peer: {report:?}"
    );
}

#[test]
fn device_and_python_sdk_hear_each_other_and_see_the_leave() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((python, net)) = interop_setup() else {
        return;
    };
    let report = exchange(
        &net,
        None,
        DEVICE_LISTENS,
        |url| {
            let token = join_token(PYTHON, "door");
            start_peer(
                &python,
                &net.py_ns,
                &PeerSpec {
                    name: "python",
                    url,
                    token: token.expose(),
                    tone_hz: 1000,
                    expect_hz: 440,
                    duration_s: 60,
                },
            )
            .expect("Python peer started")
        },
        |peer| python_hears(peer, DEVICE, 5),
    );
    assert_heard_cleanly(&report);
    assert_eq!(report.undecryptable, 0);
}

/// The device's keys with one shared `key` for itself and the Python peer.
fn device_keys(key: &[u8; 16]) -> E2eeKeys {
    let keys = E2eeKeys::new();
    keys.set_local_key(0, key);
    keys.set_remote_key(PYTHON, 0, key);
    keys
}

/// The Python SDK in shared-key E2EE mode (key ring 256, HKDF), sending 1 kHz, expecting 440 Hz.
fn python_e2ee_peer(python: &Path, net: &NetnsPair, url: &str, key: &[u8; 16]) -> LineProcess {
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lk_e2ee_peer.py");
    let token = join_token(PYTHON, "door");
    let mut cmd = NetnsPair::command_in(&net.py_ns, python);
    cmd.arg(&script)
        .args([url, token.expose(), &key_hex, "1000", "440", "60"]);
    LineProcess::spawn("python-e2ee", cmd).expect("Python E2EE peer started")
}

#[test]
fn encrypted_audio_interoperates_with_the_python_sdk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((python, net)) = interop_setup() else {
        return;
    };
    // One shared media key (as the SDK's shared-key mode uses), HKDF-derived on both sides.
    let key = b"interop-media-k!";
    let report = exchange(
        &net,
        Some(device_keys(key)),
        DEVICE_LISTENS,
        |url| python_e2ee_peer(&python, &net, url, key),
        |peer| python_hears(peer, DEVICE, 5),
    );
    assert_heard_cleanly(&report);
    assert!(report.undecryptable * 50 < report.decoded, "{report:?}");
}

#[test]
fn a_wrong_key_on_either_side_gives_counted_silence_not_noise() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((python, net)) = interop_setup() else {
        return;
    };
    // The device encrypts with and expects one key; the Python SDK uses another.
    let report = exchange(
        &net,
        Some(device_keys(b"interop-media-k!")),
        Duration::from_secs(8),
        |url| python_e2ee_peer(&python, &net, url, b"not-the-same-k!!"),
        |peer| {
            // While the device listened, the Python side must not have heard its tone (nor
            // noise) either.
            peer.wait_line(Duration::from_millis(500), |_| false); // collects its reports
            for line in peer
                .seen
                .iter()
                .filter(|l| l.contains("\"tone\"") && l.contains(DEVICE))
            {
                let v: Value = serde_json::from_str(line).unwrap();
                assert!(
                    v["level_db"].as_f64().unwrap() < -40.0,
                    "the Python SDK played the device's frames it could not decrypt: {line}"
                );
            }
        },
    );
    assert!(report.undecryptable > 50, "failures counted: {report:?}");
    assert_eq!(report.decoded, 0, "{report:?}");
    assert!(report.peak < 100, "silence, not noise: {report:?}");
}
