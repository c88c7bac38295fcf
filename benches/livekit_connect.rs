//! Connect latency of the device's LiveKit client against the in-repo test SFU on 127.0.0.1:
//! time from having the JWT to the first Opus packet sent, and to the first remote audio
//! frame decoded (a second client is already in the room, publishing a tone).
//!
//! Run: `cargo bench --bench livekit_connect` (env `LK_BENCH_RUNS`, default 10).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use matrix_intercom::livekit::{connect, ConnectOptions};
use support::pcm::{RecordingSink, ToneSource};
use support::sfu::{join_token, TestSfu};

fn options() -> ConnectOptions {
    ConnectOptions {
        allowed_remote_nets: Some(vec!["127.0.0.0/8".parse().unwrap()]),
        ..ConnectOptions::default()
    }
}

/// Polls `f` every millisecond until it is true; the elapsed time since `t0`.
async fn until(t0: Instant, limit: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        println!("{name:<28} no samples");
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} min {:7.1} ms  median {:7.1} ms  max {:7.1} ms  (n={})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    let runs: usize = if std::env::args().any(|a| a == "--bench") {
        std::env::var("LK_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10)
    } else {
        1
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sfu = TestSfu::start(true);
        let (peer, _peer_events) = connect(
            &sfu.ws_url(),
            &join_token("@peer:example.org:PEER", "bench"),
            options(),
            Box::new(ToneSource::new(1000.0, 8000)),
            Box::new(RecordingSink::new()),
        )
        .await
        .expect("peer joined");
        let (mut joined, mut sent, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let jwt = join_token(&format!("@dev{i}:example.org:DEV{i}"), "bench");
            let t0 = Instant::now();
            let (call, _events) = connect(
                &sfu.ws_url(),
                &jwt,
                options(),
                Box::new(ToneSource::new(440.0, 8000)),
                Box::new(RecordingSink::new()),
            )
            .await
            .expect("joined");
            joined.push(t0.elapsed());
            let limit = Duration::from_secs(15);
            if let Some(d) = until(t0, limit, || call.stats().packets_sent > 0).await {
                sent.push(d);
            }
            let first_decoded = until(t0, limit, || {
                call.stats()
                    .tracks
                    .iter()
                    .any(|t| t.stats.decode.frames_decoded > 0)
            })
            .await;
            if let Some(d) = first_decoded {
                decoded.push(d);
            }
            call.leave().await;
        }
        peer.leave().await;
        println!("LiveKit connect latency on loopback, {runs} run(s):");
        summary("JWT -> joined (signalling)", joined);
        summary("JWT -> first Opus sent", sent);
        summary("JWT -> first audio decoded", decoded);
    });
}
