//! CPU cost of the audio paths, per second of audio (not a test; `cargo bench --bench audio`).
//! Capture path: voice processing (mic gain, AEC with 200 ms tail, NS, AGC) on 20 ms frames.
//! Playback path: mixing a call frame with a feedback sound and applying volume.
//! Conversion: resampling a 44.1 kHz device to 48 kHz (only when a device lacks 48 kHz).

use matrix_intercom::audio::{volume_gain, SoundBank, SoundPlayer, VoiceProcessor, VoiceSettings};
use matrix_intercom::machine::Sound;
use matrix_intercom::pcm::FRAME_SAMPLES;
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

fn per_second(label: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    let ms = t.elapsed().as_secs_f64() * 1000.0 / SECONDS as f64;
    println!("{label:<52} {ms:>8.2} ms  {:>6.2} %", ms / 10.0);
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
            p.mix_into(&mut out);
            for s in out.iter_mut() {
                *s = (f32::from(*s) * g) as i16;
            }
            black_box(&out);
        }
    });
}
