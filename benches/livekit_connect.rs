//! The device's LiveKit client against the official LiveKit Python SDK (libwebrtc), both
//! through the same in-repo test SFU (the `mi-test-sfu` binary, its own process), in one run:
//! (a) device: token in hand → joined, → first Opus packet sent, → first remote audio decoded;
//! (b) Python SDK peer: token in hand → `connect()` returned, → `publish_track()` returned,
//!     → first remote audio frame;
//! (c) CPU seconds per call-second and peak RSS of each side over a two-party call.
//! Every connect is measured with one participant of the other kind in the room, publishing.
//! The device runs in this process (which holds nothing else of weight), in the SFU's network
//! namespace; the Python peer runs in a second namespace joined by a veth pair (libwebrtc
//! gathers no candidates on loopback alone). Needs root.
//!
//! Run: `cargo build --release -p mi-test-sfu && cargo bench --bench livekit_connect`
//! Env: `LK_BENCH_RUNS` (connects per side, default 5), `LK_BENCH_CALL_SECS` (call length,
//! default 60), `MI_PYTHON` (interpreter with the `livekit` SDK; default the dev venv).
//! Without `--bench` (`cargo test --benches`) it runs once with a 3 s call, as a smoke test.

#[path = "livekit_connect/procfs.rs"]
mod procfs;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "livekit_connect/table.rs"]
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use matrix_intercom::livekit::{connect, ConnectOptions, LiveKitCall, LiveKitEvent};
use mi_test_sfu::testkit::{sfu_binary, start_peer, LineProcess, NetnsPair, PeerSpec, Sfu};
use serde_json::Value;
use support::pcm::{DiscardSink, ToneSource};
use support::sfu::{join_token, KEY, SECRET};
use table::{CallCost, CallQuality, Connects, Report};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

const ROOM: &str = "bench";
/// What each side publishes; the other side listens for it.
const DEVICE_TONE: u32 = 440;
const PYTHON_TONE: u32 = 1000;
/// Bound on every single wait for a join or for first audio.
const STEP_LIMIT: Duration = Duration::from_secs(30);

struct Config {
    runs: usize,
    call: Duration,
}

impl Config {
    fn from_env() -> Self {
        // `cargo bench` passes `--bench`; `cargo test --benches` runs a short smoke pass.
        if !std::env::args().any(|a| a == "--bench") {
            return Config {
                runs: 1,
                call: Duration::from_secs(3),
            };
        }
        let var = |k: &str, default: u64| -> u64 {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Config {
            runs: var("LK_BENCH_RUNS", 5).max(1) as usize,
            call: Duration::from_secs(var("LK_BENCH_CALL_SECS", 60).max(1)),
        }
    }
}

/// Where the device and the Python peers find the SFU.
struct Setup {
    python: PathBuf,
    py_ns: String,
    url: String,
    subnet: String,
    config: Config,
}

fn device_identity(n: &str) -> String {
    format!("@door:example.org:BENCHDEV{n}")
}

fn python_identity(n: usize) -> String {
    format!("@visitor:example.org:BENCHPY{n}")
}

/// Polls `f` every millisecond until it is true; the elapsed time since `t0` in ms.
async fn until(t0: Instant, f: impl Fn() -> bool) -> Option<f64> {
    while t0.elapsed() < STEP_LIMIT {
        if f() {
            return Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

type Device = (LiveKitCall, Receiver<LiveKitEvent>);

/// Joins as device `n`, recording its connect timings into `into` when given.
fn device_join(rt: &Runtime, s: &Setup, n: &str, into: Option<&mut Connects>) -> Device {
    let jwt = join_token(&device_identity(n), ROOM);
    let opts = ConnectOptions {
        allowed_remote_nets: Some(vec![s.subnet.parse().expect("subnet")]),
        ..ConnectOptions::default()
    };
    rt.block_on(async {
        let t0 = Instant::now();
        let (call, events) = connect(
            &s.url,
            &jwt,
            opts,
            Box::new(ToneSource::new(f64::from(DEVICE_TONE), 8000)),
            Box::new(DiscardSink::new()),
        )
        .await
        .expect("the device joined the test SFU");
        let joined = t0.elapsed().as_secs_f64() * 1000.0;
        if let Some(c) = into {
            c.joined.push(joined);
            c.published
                .extend(until(t0, || call.stats().packets_sent > 0).await);
            let decoded = until(t0, || {
                call.stats()
                    .tracks
                    .iter()
                    .any(|t| t.stats.decode.frames_decoded > 0)
            })
            .await;
            c.first_audio.extend(decoded);
        }
        (call, events)
    })
}

/// Starts Python peer `n`; waits for its join, publish and first audio from `device`,
/// recording the timings into `into`.
fn python_join(s: &Setup, n: usize, device: &str, into: &mut Connects) -> LineProcess {
    let token = join_token(&python_identity(n), ROOM);
    let name = format!("python{n}");
    let mut peer = start_peer(
        &s.python,
        &s.py_ns,
        &PeerSpec {
            name: &name,
            url: &s.url,
            token: token.expose(),
            tone_hz: PYTHON_TONE,
            expect_hz: DEVICE_TONE,
            // It leaves on stdin EOF; this only bounds a peer left behind.
            duration_s: s.config.call.as_secs() as u32 + 300,
        },
    )
    .expect("Python peer started");
    let field = |v: Option<Value>, key: &str| v.and_then(|v| v[key].as_f64());
    let connected = peer.wait_json(STEP_LIMIT, |v| {
        v["event"] == "connected" || v["event"] == "error"
    });
    assert!(
        connected
            .as_ref()
            .is_some_and(|v| v["event"] == "connected"),
        "the Python peer did not join: {connected:?}"
    );
    into.joined.extend(field(connected, "connect_ms"));
    let published = peer.wait_json(STEP_LIMIT, |v| v["event"] == "published");
    into.published.extend(field(published, "publish_ms"));
    let first = peer.wait_json(STEP_LIMIT, |v| {
        v["event"] == "first_audio" && v["identity"] == device
    });
    into.first_audio.extend(field(first, "ms"));
    peer
}

fn python_leave(mut peer: LineProcess) {
    peer.close_stdin();
    if !peer.wait_exit(Duration::from_secs(20)) {
        eprintln!("the Python peer did not leave within 20 s; killing it");
    }
}

/// One-second tone reports of `peer` about `identity` seen so far: (clear, all). Drains
/// what is queued first.
fn tone_reports(peer: &mut LineProcess, identity: &str) -> (usize, usize) {
    peer.wait_line(Duration::from_millis(200), |_| false);
    let reports: Vec<Value> = peer
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "tone" && v["identity"] == identity)
        .collect();
    let clear = reports
        .iter()
        .filter(|v| {
            v["ratio"].as_f64().unwrap_or(0.0) > 0.8
                && v["level_db"].as_f64().unwrap_or(-120.0) > -30.0
        })
        .count();
    (clear, reports.len())
}

/// Frames the device decoded from `identity` and frames it had to repair.
fn device_decode(call: &LiveKitCall, identity: &str) -> (u64, u64) {
    call.stats()
        .tracks
        .iter()
        .find(|t| t.identity.as_deref() == Some(identity))
        .map(|t| {
            let d = t.stats.decode;
            (d.frames_decoded, d.frames_concealed + d.frames_fec)
        })
        .unwrap_or_default()
}

/// The whole run, on a thread inside the SFU's namespace.
fn run(s: Setup) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runs = s.config.runs;
    let (mut device, mut python) = (Connects::default(), Connects::default());

    // (b) Python peers join one after another while a device is in the room; the last stays.
    let resident = device_join(&rt, &s, "RES", None);
    let mut peer = None;
    for n in 0..runs {
        if let Some(p) = peer.take() {
            python_leave(p);
        }
        peer = Some(python_join(&s, n, &device_identity("RES"), &mut python));
    }
    let mut peer = peer.expect("at least one run");
    rt.block_on(resident.0.leave());

    // (a) Devices join one after another while that Python peer is in the room; the last
    // stays for the call. Peak RSS counts from the last join (as the Python peer's does).
    let mut call: Option<Device> = None;
    for n in 0..runs {
        if let Some((c, _events)) = call.take() {
            rt.block_on(c.leave());
        }
        if n + 1 == runs && !procfs::reset_own_peak_rss() {
            eprintln!("could not reset this process's peak RSS; it covers the whole run");
        }
        call = Some(device_join(&rt, &s, &n.to_string(), Some(&mut device)));
    }
    let (call, _events) = call.expect("at least one run");
    let dev_id = device_identity(&(runs - 1).to_string());
    let py_id = python_identity(runs - 1);

    // (c) The two-party call: both directions flowing, then measured for `call` seconds.
    peer.wait_json(STEP_LIMIT, |v| {
        v["event"] == "first_audio" && v["identity"] == dev_id.as_str()
    })
    .expect("the Python peer heard the device");
    peer.seen.clear();
    let (decoded0, repaired0) = device_decode(&call, &py_id);
    let me = std::process::id();
    let device_cpu = procfs::CpuWindow::start(me).expect("own /proc stat");
    let python_cpu = procfs::CpuWindow::start(peer.pid()).expect("Python peer's /proc stat");
    // The call itself: this thread has nothing to do while it lasts.
    std::thread::sleep(s.config.call);
    let device_cost = CallCost {
        cpu_per_s: device_cpu.per_second().expect("own /proc stat"),
        peak_rss: procfs::peak_rss_bytes(me).expect("own /proc status"),
    };
    let python_cost = CallCost {
        cpu_per_s: python_cpu.per_second().expect("Python peer's /proc stat"),
        peak_rss: procfs::peak_rss_bytes(peer.pid()).expect("Python peer's /proc status"),
    };
    let (decoded1, repaired1) = device_decode(&call, &py_id);
    let (good, seconds) = tone_reports(&mut peer, &dev_id);
    python_leave(peer);
    rt.block_on(call.leave());
    Report {
        runs,
        call: s.config.call,
        device,
        python,
        device_cost,
        python_cost,
        quality: CallQuality {
            device_decoded: decoded1 - decoded0,
            device_repaired: repaired1 - repaired0,
            python_good_seconds: good,
            python_seconds: seconds,
        },
    }
}

fn main() {
    let config = Config::from_env();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !NetnsPair::available() {
        assert!(!ci, "this benchmark needs root (network namespaces)");
        eprintln!("!!! SKIPPING livekit_connect benchmark: needs root for network namespaces !!!");
        return;
    }
    let Some(python) = mi_test_sfu::testkit::python().expect("python for the SDK peer") else {
        return;
    };
    let sfu_bin = sfu_binary().unwrap_or_else(|| {
        panic!(
            "no mi-test-sfu binary next to this benchmark: run `cargo build --release -p \
             mi-test-sfu` first (same target dir), or set MI_TEST_SFU_BIN"
        )
    });
    let net = NetnsPair::new().expect("network namespaces");
    let sfu = Sfu::start(&sfu_bin, Some(&net.sfu_ns), &net.sfu_ip(), KEY, SECRET, &[])
        .expect("mi-test-sfu started");
    let setup = Setup {
        python,
        py_ns: net.py_ns.clone(),
        url: sfu.http.replacen("http://", "ws://", 1),
        subnet: format!("10.77.{}.0/24", net.subnet),
        config,
    };
    let report = NetnsPair::run_in(&net.sfu_ns, move || run(setup)).expect("SFU namespace");
    drop(sfu);
    drop(net);
    report.print();
}
