//! Goertzel tone detection over 20 ms frames.

use matrix_intercom::pcm::{FRAME_SAMPLES, SAMPLE_RATE};

/// Share (0..=1) of the frame's energy at `freq` (Goertzel power over total energy).
pub fn tone_share(frame: &[i16], freq: f64) -> f64 {
    let n = frame.len() as f64;
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &x in frame {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if energy <= 0.0 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone of N samples gives power ≈ energy * N / 2.
    (2.0 * power / (n * energy)).min(1.0)
}

/// Whether a frame carries `freq` clearly (loud enough, and dominant).
pub fn frame_has_tone(frame: &[i16], freq: f64) -> bool {
    let rms =
        (frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / frame.len() as f64).sqrt();
    rms > 500.0 && tone_share(frame, freq) > 0.5
}

/// The longest run of consecutive 20 ms frames carrying `freq`, in frames.
pub fn longest_tone_run(samples: &[i16], freq: f64) -> usize {
    let mut best = 0;
    let mut run = 0;
    for frame in samples.chunks_exact(FRAME_SAMPLES) {
        if frame_has_tone(frame, freq) {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// Fraction of the last `frames` 20 ms frames that carry `freq` (0 when fewer were recorded).
pub fn recent_tone_fraction(samples: &[i16], freq: f64, frames: usize) -> f64 {
    let have = samples.len() / FRAME_SAMPLES;
    if have < frames || frames == 0 {
        return 0.0;
    }
    let start = (have - frames) * FRAME_SAMPLES;
    let hits = samples[start..have * FRAME_SAMPLES]
        .chunks_exact(FRAME_SAMPLES)
        .filter(|f| frame_has_tone(f, freq))
        .count();
    hits as f64 / frames as f64
}
