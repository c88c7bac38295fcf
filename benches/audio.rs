//! CPU cost of the audio paths, per second of audio (not a test; `cargo bench --bench audio`).
//! Capture path: voice processing (mic gain, AEC with 200 ms tail, NS, AGC) on 20 ms frames.
//! Playback path: mixing a call frame with a feedback sound and applying volume.
//! Conversion: resampling a 44.1 kHz device to 48 kHz (only when a device lacks 48 kHz).
//! Full paths: capture + voice processing + Opus encode; jitter buffer + Opus decode + mix.
//! Then the latency each way: the buffers and frames of the design plus the measured processing.
//! Under qemu-aarch64: `cargo bench --bench audio --profile dev --target aarch64-unknown-linux-gnu`.

use matrix_intercom::audio::{
    volume_gain, SoundBank, SoundPlayer, VoiceProcessor, VoiceSettings, ALSA_PERIODS,
    ALSA_PERIOD_MS, DOWNLINK_FRAMES, REFERENCE_WAIT, UPLINK_FRAMES,
};
use matrix_intercom::livekit::codec::{MicEncoder, TrackPlayout};
use matrix_intercom::livekit::jitter::JitterConfig;
use matrix_intercom::machine::Sound;
use matrix_intercom::pcm::{FRAME_DURATION, FRAME_SAMPLES};
use std::hint::black_box;
use std::time::Instant;

const SECONDS: usize = 20;

fn noise(n: usize, mut seed: u64, amp: f32) -> Vec<i16> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * amp) as i16
        })
        .collect()
}

/// Runs `f` over [`SECONDS`] of audio; prints and returns the CPU milliseconds per second.
fn per_second(label: &str, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let ms = t.elapsed().as_secs_f64() * 1000.0 / SECONDS as f64;
    println!("{label:<52} {ms:>8.2} ms  {:>6.2} %", ms / 10.0);
    ms
}

/// A 440 Hz tone as Opus packets, one per 20 ms frame.
fn opus_packets(n: usize) -> Vec<Vec<u8>> {
    let mut enc = MicEncoder::new().unwrap();
    (0..n)
        .map(|k| {
            let frame: Vec<i16> = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (k * FRAME_SAMPLES + i) as f64 / 48_000.0;
                    (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            enc.encode(&frame).unwrap()
        })
        .collect()
}

fn playback_mix(out: &mut [i16], sounds: &mut SoundPlayer, gain: f32) {
    sounds.mix_into(out);
    for s in out.iter_mut() {
        *s = (f32::from(*s) * gain) as i16;
    }
}

fn voice(s: VoiceSettings) {
    let n = 48_000 * SECONDS;
    let far = noise(n, 1, 3000.0);
    let mut mic: Vec<i16> = noise(n, 2, 100.0);
    for i in 2400..n {
        mic[i] = mic[i].saturating_add(far[i - 2400] / 3);
    }
    let mut vp = VoiceProcessor::new(s).unwrap();
    for (m, f) in mic
        .chunks_exact_mut(FRAME_SAMPLES)
        .zip(far.chunks_exact(FRAME_SAMPLES))
    {
        vp.process(m, f);
    }
    black_box(&mic);
}

fn main() {
    println!(
        "{:<52} {:>11} {:>8}",
        "path (48 kHz mono, 20 ms frames)", "CPU per s", "of 1 core"
    );
    let all = VoiceSettings {
        echo_cancellation: true,
        noise_suppression: true,
        auto_gain: true,
        mic_gain_db: 6.0,
    };
    per_second("capture: AEC + NS + AGC + gain", || voice(all));
    per_second("capture: AEC only", || {
        voice(VoiceSettings {
            noise_suppression: false,
            auto_gain: false,
            ..all
        })
    });
    per_second("capture: NS + AGC, no AEC", || {
        voice(VoiceSettings {
            echo_cancellation: false,
            ..all
        })
    });
    per_second("playback: mix call + ringing + volume", || {
        let bank = SoundBank::builtin();
        let mut p = SoundPlayer::default();
        p.start(bank.get(Sound::Ringing).clone());
        let call = noise(FRAME_SAMPLES, 3, 3000.0);
        let mut out = vec![0i16; FRAME_SAMPLES];
        let g = volume_gain(80);
        for _ in 0..SECONDS * 50 {
            out.copy_from_slice(&call);
            playback_mix(&mut out, &mut p, g);
            black_box(&out);
        }
    });
    let capture_ms = per_second("capture path: AEC + NS + AGC + Opus encode", || {
        let n = 48_000 * SECONDS;
        let far = noise(n, 1, 3000.0);
        let mut mic = noise(n, 2, 3000.0);
        let mut vp = VoiceProcessor::new(all).unwrap();
        let mut enc = MicEncoder::new().unwrap();
        for (m, f) in mic
            .chunks_exact_mut(FRAME_SAMPLES)
            .zip(far.chunks_exact(FRAME_SAMPLES))
        {
            vp.process(m, f);
            black_box(enc.encode(m).unwrap());
        }
    });
    let packets = opus_packets(SECONDS * 50);
    let playback_ms = per_second("playback path: jitter + Opus decode + mix + volume", || {
        let mut track = TrackPlayout::new().unwrap();
        let mut sounds = SoundPlayer::default();
        let g = volume_gain(80);
        let mut out = vec![0i16; FRAME_SAMPLES];
        for (seq, p) in packets.iter().enumerate() {
            track.insert(seq as u64, p.clone());
            track.next_frame(&mut out);
            playback_mix(&mut out, &mut sounds, g);
            black_box(&out);
        }
        assert!(track.stats().frames_decoded > 0, "nothing decoded");
    });
    latency_table(capture_ms, playback_ms);
}

/// The latency each way: what the design buffers (fixed, or up to a bound) plus the measured
/// processing of one frame.
fn latency_table(capture_ms_per_s: f64, playback_ms_per_s: f64) {
    let frame = FRAME_DURATION.as_secs_f64() * 1000.0;
    let per_frame = |ms_per_s: f64| ms_per_s * frame / 1000.0;
    let lookahead = MicEncoder::new()
        .unwrap()
        .lookahead()
        .unwrap()
        .as_secs_f64()
        * 1000.0;
    let jitter = JitterConfig::default();
    let period = f64::from(ALSA_PERIOD_MS);
    let rows_up = [
        (
            "20 ms frame assembly (ALSA periods inside it)",
            frame,
            frame,
        ),
        (
            "wait for the AEC's far-end frame",
            0.0,
            REFERENCE_WAIT.as_secs_f64() * 1000.0,
        ),
        (
            "voice processing + encode (measured)",
            per_frame(capture_ms_per_s),
            per_frame(capture_ms_per_s),
        ),
        ("Opus look-ahead", lookahead, lookahead),
        (
            "uplink queue (only while the sender stalls)",
            0.0,
            UPLINK_FRAMES as f64 * frame,
        ),
    ];
    let rows_down = [
        (
            "jitter buffer (adaptive target)",
            jitter.initial_target as f64 * frame,
            jitter.max_target as f64 * frame,
        ),
        (
            "decode + mix (measured)",
            per_frame(playback_ms_per_s),
            per_frame(playback_ms_per_s),
        ),
        (
            "downlink queue to the playback thread",
            0.0,
            DOWNLINK_FRAMES as f64 * frame,
        ),
        (
            "ALSA playback buffer (a frame ahead / full)",
            frame,
            f64::from(ALSA_PERIODS) * period,
        ),
    ];
    println!();
    println!(
        "{:<52} {:>11} {:>11}",
        "added latency (ms)", "typical", "at most"
    );
    for (title, rows) in [
        ("microphone → network", &rows_up[..]),
        ("network → speaker", &rows_down[..]),
    ] {
        let (typ, max) = rows.iter().fold((0.0, 0.0), |(t, m), r| (t + r.1, m + r.2));
        for (what, t, m) in rows {
            println!("  {what:<50} {t:>11.1} {m:>11.1}");
        }
        println!("{:<52} {typ:>11.1} {max:>11.1}", format!("= {title}"));
    }
}
