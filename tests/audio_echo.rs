//! Echo cancellation on an echo-only microphone signal: what the speaker played comes back
//! through a synthetic room (delay, attenuation, a little reverb) with a faint noise floor.
//! Runs the voice processor the engine uses (no sound device needed).

use matrix_intercom::audio::{VoiceProcessor, VoiceSettings};
use matrix_intercom::pcm::FRAME_SAMPLES;

const RATE: usize = 48_000;

/// Deterministic speech-like signal: noise through two resonators, 4 Hz syllable envelope,
/// bursts and pauses; -20 dBFS RMS while active.
fn speechlike(n: usize, mut seed: u64) -> Vec<f32> {
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(n);
    let (mut y1, mut y2, mut z1, mut z2) = (0f32, 0f32, 0f32, 0f32);
    while out.len() < n {
        let burst = ((0.3 + 0.45 * (rnd() + 1.0)) * RATE as f32) as usize;
        let gap = ((0.1 + 0.2 * (rnd() + 1.0)) * RATE as f32) as usize;
        let f1 = 300.0 + 300.0 * (rnd() + 1.0);
        let f2 = 900.0 + 900.0 * (rnd() + 1.0);
        let r = 0.995f32;
        let w = |f: f32| 2.0 * r * (2.0 * std::f32::consts::PI * f / RATE as f32).cos();
        let (a1, b1) = (w(f1), w(f2));
        for k in 0..burst {
            let env = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * 4.0 * k as f32 / RATE as f32).cos();
            let x = rnd();
            let y = x + a1 * y1 - r * r * y2;
            y2 = y1;
            y1 = y;
            let z = x + b1 * z1 - r * r * z2;
            z2 = z1;
            z1 = z;
            out.push(env * (0.02 * y + 0.015 * z + 0.05 * x));
        }
        out.extend(std::iter::repeat_n(0.0, gap));
    }
    out.truncate(n);
    // Scale active parts to -20 dBFS RMS.
    let active: Vec<f32> = out.iter().copied().filter(|v| *v != 0.0).collect();
    let rms = (active.iter().map(|v| v * v).sum::<f32>() / active.len() as f32).sqrt();
    let g = 0.1 * 32767.0 / rms;
    out.iter().map(|v| v * g).collect()
}

/// The room: 40 ms direct path at -8 dB, reverb taps to 100 ms, noise floor around -66 dBFS.
fn room(far: &[f32]) -> Vec<f32> {
    let taps = [
        (1920, 0.4f32),
        (2160, 0.1),
        (2500, -0.06),
        (3100, 0.04),
        (4800, -0.02),
    ];
    let mut seed = 7u64;
    (0..far.len())
        .map(|n| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 32.0;
            noise
                + taps
                    .iter()
                    .filter(|(d, _)| n >= *d)
                    .map(|(d, g)| g * far[n - d])
                    .sum::<f32>()
        })
        .collect()
}

fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

fn energy(x: &[i16]) -> f64 {
    x.iter().map(|&v| f64::from(v).powi(2)).sum()
}

/// Runs 12 s through the processor; returns echo attenuation (dB) over the last 6 s.
fn attenuation(settings: VoiceSettings) -> f64 {
    let n = RATE * 12;
    let far = to_i16(&speechlike(n, 1));
    let far_f: Vec<f32> = far.iter().map(|&v| f32::from(v)).collect();
    let mic = to_i16(&room(&far_f));
    let mut vp = VoiceProcessor::new(settings).unwrap();
    let mut out = Vec::with_capacity(n);
    for (m, f) in mic
        .chunks_exact(FRAME_SAMPLES)
        .zip(far.chunks_exact(FRAME_SAMPLES))
    {
        let mut frame = m.to_vec();
        vp.process(&mut frame, f);
        out.extend_from_slice(&frame);
    }
    let half = n / 2;
    10.0 * (energy(&mic[half..]) / energy(&out[half..]).max(1.0)).log10()
}

fn settings(aec: bool) -> VoiceSettings {
    VoiceSettings {
        echo_cancellation: aec,
        noise_suppression: false,
        auto_gain: false,
        mic_gain_db: 0.0,
    }
}

#[test]
fn echo_is_attenuated_by_more_than_20_db_after_convergence() {
    let a = attenuation(settings(true));
    println!("echo attenuation with AEC: {a:.1} dB");
    assert!(a >= 20.0, "echo attenuated by only {a:.1} dB");
}

#[test]
fn with_echo_cancellation_off_the_echo_passes() {
    let a = attenuation(settings(false));
    assert!(a.abs() < 1.0, "attenuation {a:.1} dB with AEC off");
}
