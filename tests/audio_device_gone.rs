//! A capture device that cannot be opened (wrong name, unplugged) does not stop the call:
//! the engine reports it, keeps retrying and sends silence meanwhile.

use matrix_intercom::audio::{AudioEngine, DeviceStatus, EngineOptions};
use matrix_intercom::config::AudioConfig;
use matrix_intercom::pcm::FRAME_SAMPLES;

#[test]
fn a_missing_capture_device_is_reported_and_the_call_gets_silence() {
    // No asoundrc at all: alsa-lib's own config, in which this name does not exist.
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CONFIG_HOME", tmp.path());
    let cfg = AudioConfig {
        capture: "no_such_microphone".into(),
        playback: "null".into(),
        ..AudioConfig::default()
    };
    let opts = EngineOptions {
        pace_capture: true,
        pace_playback: true,
    };
    let engine = AudioEngine::start_with_options(&cfg, opts).unwrap();
    let mut src = engine.source();
    let mut f = vec![1i16; FRAME_SAMPLES];
    for _ in 0..10 {
        src.read_frame(&mut f).unwrap();
        assert!(f.iter().all(|&s| s == 0));
    }
    match engine.stats().capture {
        DeviceStatus::Failed(msg) => {
            assert!(
                msg.contains("no_such_microphone") && msg.contains("list-audio"),
                "{msg}"
            )
        }
        other => panic!("capture status {other:?}"),
    }
    assert!(matches!(engine.stats().playback, DeviceStatus::Open(_)));
    engine.shutdown();
}
