//! Echo cancellation through the whole engine and the real alsa-lib path: the playback PCM
//! (`file` plugin) writes into a FIFO, a test "room" thread delays, attenuates and reverberates
//! it and writes it into the FIFO the capture PCM reads (`infile`). Nothing but this echo
//! reaches the microphone, so whatever comes out of the call source is residual echo.

mod audio_support;

use audio_support::*;
use matrix_intercom::audio::{AudioEngine, EngineOptions};
use matrix_intercom::config::AudioConfig;
use matrix_intercom::pcm::FRAME_SAMPLES;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PCMS: &str = r#"
pcm.loop_mic {
    type file
    slave.pcm null
    file "/dev/null"
    infile "@DIR@/mic.fifo"
    format raw
}
pcm.loop_spk {
    type file
    slave.pcm null
    file "@DIR@/spk.fifo"
    format raw
}
"#;

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: plain libc call with a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

/// Deterministic speech-like bursts (-20 dBFS RMS while active), as in `audio_echo.rs`.
fn speechlike(n: usize) -> Vec<i16> {
    let mut seed = 11u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(n);
    let (mut y1, mut y2) = (0f32, 0f32);
    while out.len() < n {
        let burst = ((0.3 + 0.45 * (rnd() + 1.0)) * RATE) as usize;
        let gap = ((0.1 + 0.2 * (rnd() + 1.0)) * RATE) as usize;
        let r = 0.99f32;
        let a1 =
            2.0 * r * (2.0 * std::f32::consts::PI * (300.0 + 400.0 * (rnd() + 1.0)) / RATE).cos();
        for k in 0..burst {
            let env = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * 4.0 * k as f32 / RATE).cos();
            let x = rnd();
            let y = x + a1 * y1 - r * r * y2;
            y2 = y1;
            y1 = y;
            out.push(env * (0.05 * y + 0.5 * x) * 6000.0);
        }
        out.extend(std::iter::repeat_n(0.0, gap));
    }
    out.truncate(n);
    out.iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[test]
fn echo_through_a_room_is_attenuated_by_20_db_by_the_engine() {
    let dir = alsa_config(PCMS);
    let (spk, mic) = (dir.join("spk.fifo"), dir.join("mic.fifo"));
    mkfifo(&spk);
    mkfifo(&mic);
    // The room: 70 ms at -8 dB plus reverb taps to 120 ms; records the echo it sends.
    let echo_sent = Arc::new(Mutex::new(Vec::<i16>::new()));
    let room = {
        let echo_sent = echo_sent.clone();
        std::thread::spawn(move || {
            // Open the microphone end first: the capture side is then reading before the
            // first played sample arrives, as with a real card (no start-up backlog).
            let mut to_mic = std::fs::OpenOptions::new().write(true).open(&mic).unwrap();
            let mut from_spk = std::fs::File::open(&spk).unwrap();
            // 50 ms stands for the playback buffer a real card adds (the file plugin adds none).
            let taps = [
                (2400usize, 0.4f32),
                (2660, 0.1),
                (3260, -0.05),
                (4800, 0.02),
            ];
            let mut history = vec![0i16; 6000];
            let mut buf = vec![0u8; 3840];
            loop {
                let n = match from_spk.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n & !1,
                };
                let mut out = Vec::with_capacity(n);
                for b in buf[..n].chunks_exact(2) {
                    history.push(i16::from_le_bytes([b[0], b[1]]));
                    let h = history.len();
                    let e: f32 = taps
                        .iter()
                        .map(|&(d, g)| g * f32::from(history[h - 1 - d]))
                        .sum();
                    out.push(e.round() as i16);
                }
                let keep = history.len() - 6000;
                history.drain(..keep);
                echo_sent.lock().unwrap().extend_from_slice(&out);
                let bytes: Vec<u8> = out.iter().flat_map(|s| s.to_le_bytes()).collect();
                if to_mic.write_all(&bytes).is_err() {
                    break;
                }
            }
        })
    };
    let cfg = AudioConfig {
        capture: "loop_mic".into(),
        playback: "loop_spk".into(),
        volume: 100,
        noise_suppression: false,
        auto_gain: false,
        ..AudioConfig::default()
    };
    // Playback has no clock (null slave): pace it. Capture is paced by the FIFO.
    let opts = EngineOptions {
        pace_capture: false,
        pace_playback: true,
    };
    let engine = AudioEngine::start_with_options(&cfg, opts).unwrap();
    let mut src = engine.source();
    let mut sink = engine.sink();
    let far = speechlike(FRAME_SAMPLES * 400); // 8 s
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for f in far.chunks_exact(FRAME_SAMPLES) {
                if stop.load(Ordering::Relaxed) || sink.write_frame(f).is_err() {
                    break;
                }
            }
        })
    };
    let mut residual = Vec::new();
    let mut f = vec![0i16; FRAME_SAMPLES];
    for _ in 0..380 {
        src.read_frame(&mut f).unwrap();
        residual.extend_from_slice(&f);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let stats = engine.stats();
    drop(src);
    engine.shutdown();
    room.join().unwrap();
    let echo = echo_sent.lock().unwrap().clone();
    // Compare the last 3 s: echo the room sent vs what the call received.
    let tail = FRAME_SAMPLES * 150;
    let (e, r) = (
        &echo[echo.len().saturating_sub(tail)..],
        &residual[residual.len() - tail..],
    );
    let att = db(rms(e) / rms(r).max(1.0));
    println!(
        "room echo {:.0} rms, residual {:.1} rms: {att:.1} dB; {stats:?}",
        rms(e),
        rms(r)
    );
    assert!(rms(e) > 300.0, "the room sent no real echo");
    assert!(att >= 20.0, "echo attenuated by only {att:.1} dB");
}
