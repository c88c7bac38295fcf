//! Capture through the real alsa-lib path (`file` plugin reading raw s16le into a `null`
//! slave) into the engine's call source. alsa-lib config is per process: this binary's tests
//! share one asoundrc with several named PCMs.

mod audio_support;

use audio_support::*;
use matrix_intercom::audio::{
    list_devices, AudioEngine, DeviceStatus, EngineOptions, UPLINK_FRAMES,
};
use matrix_intercom::config::AudioConfig;
use matrix_intercom::pcm::FRAME_SAMPLES;

const PCMS: &str = r#"
pcm.test_mic {
    type file
    slave.pcm null
    file "/dev/null"
    infile "@DIR@/mic.s16le"
    format raw
    hint { show on description "test microphone" }
}
pcm.test_mic_gain {
    type file
    slave.pcm null
    file "/dev/null"
    infile "@DIR@/mic_gain.s16le"
    format raw
}
pcm.test_mic_stall {
    type file
    slave.pcm null
    file "/dev/null"
    infile "@DIR@/mic_stall.s16le"
    format raw
}
pcm.test_spk_null {
    type null
}
"#;

const AMP: f32 = 8000.0;

fn setup(file: &str, secs: f32) -> std::path::PathBuf {
    let dir = alsa_config(PCMS);
    let path = path_in(dir, file);
    write_raw(&path, &tone(1000.0, AMP, (secs * RATE) as usize));
    path
}

fn config(capture: &str, gain_db: i8) -> AudioConfig {
    AudioConfig {
        capture: capture.into(),
        playback: "test_spk_null".into(),
        mic_gain_db: gain_db,
        echo_cancellation: false,
        noise_suppression: false,
        auto_gain: false,
        ..AudioConfig::default()
    }
}

fn paced() -> EngineOptions {
    EngineOptions {
        pace_capture: true,
        pace_playback: true,
    }
}

fn read_frames(src: &mut dyn matrix_intercom::pcm::PcmSource, n: usize) -> Vec<i16> {
    let mut all = Vec::new();
    let mut f = vec![0i16; FRAME_SAMPLES];
    for _ in 0..n {
        src.read_frame(&mut f).expect("frame");
        all.extend_from_slice(&f);
    }
    all
}

#[test]
fn a_1khz_tone_on_the_microphone_reaches_the_call_at_1khz_and_its_level() {
    setup("mic.s16le", 5.0);
    let engine = AudioEngine::start_with_options(&config("test_mic", 0), paced()).unwrap();
    assert!(
        engine.wait_open(std::time::Duration::from_secs(10)),
        "{:?}",
        engine.stats()
    );
    let DeviceStatus::Open(g) = engine.stats().capture else {
        panic!()
    };
    assert_eq!((g.rate, g.channels), (48_000, 1), "granted {g:?}");
    let mut src = engine.source();
    let x = read_frames(src.as_mut(), 50);
    let x = &x[FRAME_SAMPLES * 5..];
    let at_1k = goertzel(x, 1000.0);
    assert!(
        (db(at_1k / AMP)).abs() < 0.5,
        "1 kHz amplitude {at_1k}, expected {AMP}"
    );
    for f in [500.0, 1500.0, 3000.0] {
        assert!(goertzel(x, f) < AMP / 100.0, "energy at {f} Hz");
    }
    assert!((db(rms(x) / (AMP / 2f32.sqrt()))).abs() < 0.5);
}

#[test]
fn mic_gain_from_config_raises_the_level() {
    setup("mic_gain.s16le", 5.0);
    let engine = AudioEngine::start_with_options(&config("test_mic_gain", 6), paced()).unwrap();
    let mut src = engine.source();
    let x = read_frames(src.as_mut(), 30);
    let gain = goertzel(&x[FRAME_SAMPLES * 5..], 1000.0) / AMP;
    assert!((db(gain) - 6.0).abs() < 0.5, "gain {} dB", db(gain));
}

#[test]
fn a_stalled_reader_loses_old_frames_counted_and_the_stream_goes_on() {
    setup("mic_stall.s16le", 20.0);
    let engine = AudioEngine::start_with_options(&config("test_mic_stall", 0), paced()).unwrap();
    let mut src = engine.source();
    read_frames(src.as_mut(), 2);
    // The reader stalls: the capture side keeps running and drops the oldest frames.
    assert!(
        wait_for(10, || engine.stats().uplink_dropped >= 5),
        "no overflow counted: {:?}",
        engine.stats()
    );
    let before = engine.stats().captured_frames;
    // Reading resumes: the backlog is bounded, then fresh frames keep coming.
    let x = read_frames(src.as_mut(), UPLINK_FRAMES + 10);
    assert!(engine.stats().captured_frames >= before + 10);
    assert!((db(goertzel(&x[x.len() - FRAME_SAMPLES * 5..], 1000.0) / AMP)).abs() < 0.5);
    let s = engine.stats();
    assert!(s.uplink_dropped >= 5 && s.capture_xruns == 0, "{s:?}");
}

#[test]
fn list_devices_shows_configured_pcms_with_their_description() {
    alsa_config(PCMS);
    let list = list_devices().unwrap();
    let mic = list
        .iter()
        .find(|d| d.name == "test_mic")
        .expect("test_mic listed");
    assert_eq!(mic.description, "test microphone");
}
