//! Playback through the real alsa-lib path (`file` plugin writing raw s16le, `null` slave):
//! call audio written to the engine's sink and feedback sounds end up in the file.
//! alsa-lib config is per process: this binary's tests share one asoundrc.

mod audio_support;

use audio_support::*;
use matrix_intercom::audio::{volume_gain, AudioEngine, EngineOptions, DOWNLINK_FRAMES};
use matrix_intercom::config::AudioConfig;
use matrix_intercom::machine::Sound;
use matrix_intercom::pcm::FRAME_SAMPLES;

const PCMS: &str = r#"
pcm.test_spk_full {
    type file
    slave.pcm null
    file "@DIR@/spk_full.s16le"
    format raw
}
pcm.test_spk_half {
    type file
    slave.pcm null
    file "@DIR@/spk_half.s16le"
    format raw
}
pcm.test_spk_sound {
    type file
    slave.pcm null
    file "@DIR@/spk_sound.s16le"
    format raw
}
pcm.test_mic_silent {
    type file
    slave.pcm null
    file "/dev/null"
    infile "/dev/zero"
    format raw
}
"#;

const AMP: f32 = 8000.0;

fn start(playback: &str, volume: u8) -> AudioEngine {
    alsa_config(PCMS);
    let cfg = AudioConfig {
        capture: "test_mic_silent".into(),
        playback: playback.into(),
        volume,
        ..AudioConfig::default()
    };
    let opts = EngineOptions {
        pace_capture: true,
        pace_playback: true,
    };
    let e = AudioEngine::start_with_options(&cfg, opts).unwrap();
    assert!(
        e.wait_open(std::time::Duration::from_secs(10)),
        "{:?}",
        e.stats()
    );
    e
}

/// Writes a 1 s 1 kHz tone to the call sink, waits until it has been played, closes the
/// engine and returns the 1 kHz amplitude found in the loudest 0.5 s of the output file.
fn play_tone_through_sink(playback: &str, volume: u8, file: &str) -> f32 {
    let engine = start(playback, volume);
    let mut sink = engine.sink();
    let t = tone(1000.0, AMP, FRAME_SAMPLES * 50);
    for f in t.chunks(FRAME_SAMPLES) {
        sink.write_frame(f).unwrap();
    }
    let written = engine.stats().played_frames;
    assert!(wait_for(10, || engine.stats().played_frames
        > written + DOWNLINK_FRAMES as u64 + 2));
    drop(sink);
    engine.shutdown();
    let out = read_raw(&path_in(alsa_config(PCMS), file));
    loudest_tone(&out, 1000.0)
}

fn loudest_tone(out: &[i16], freq: f32) -> f32 {
    let win = 24_000;
    out.chunks(win / 4)
        .enumerate()
        .map(|(i, _)| i * win / 4)
        .filter(|&s| s + win <= out.len())
        .map(|s| goertzel(&out[s..s + win], freq))
        .fold(0.0, f32::max)
}

#[test]
fn a_tone_written_to_the_sink_is_played_at_full_volume() {
    let a = play_tone_through_sink("test_spk_full", 100, "spk_full.s16le");
    assert!(db(a / AMP).abs() < 0.5, "amplitude {a}");
}

#[test]
fn volume_from_config_scales_the_output() {
    let a = play_tone_through_sink("test_spk_half", 50, "spk_half.s16le");
    let expected = AMP * volume_gain(50);
    assert!(
        db(a / expected).abs() < 0.5,
        "amplitude {a}, expected {expected}"
    );
}

#[test]
fn feedback_sounds_are_mixed_into_playback_and_can_be_stopped() {
    let engine = start("test_spk_sound", 100);
    // Warning: three 1400 Hz beeps; then Ringing (440+480 Hz), stopped after one ring.
    engine.play(Sound::Warning);
    let n0 = engine.stats().played_frames;
    assert!(wait_for(10, || engine.stats().played_frames > n0 + 30));
    engine.play(Sound::Ringing);
    let n1 = engine.stats().played_frames;
    assert!(wait_for(10, || engine.stats().played_frames > n1 + 60));
    engine.stop_sound();
    let n2 = engine.stats().played_frames;
    assert!(wait_for(10, || engine.stats().played_frames > n2 + 250));
    engine.shutdown();
    let out = read_raw(&path_in(alsa_config(PCMS), "spk_sound.s16le"));
    let frames = |a: u64, b: u64| {
        &out[a as usize * FRAME_SAMPLES..(b as usize * FRAME_SAMPLES).min(out.len())]
    };
    let beep = frames(n0, n0 + 25);
    assert!(
        goertzel(beep, 1400.0) > 3000.0,
        "warning beep: {}",
        goertzel(beep, 1400.0)
    );
    let ring = frames(n1 + 2, n1 + 40);
    assert!(goertzel(ring, 440.0) > 2000.0 && goertzel(ring, 480.0) > 2000.0);
    // After stop: the second ring (due 4 s after the first) never comes.
    let after = frames(n2 + 5, n2 + 250);
    assert!(rms(after) < 1.0, "sound after stop: rms {}", rms(after));
}
