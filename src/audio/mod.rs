//! Sound on the device: ALSA capture and playback (one blocking thread per direction, devices
//! by name), voice processing (speexdsp echo cancellation, noise suppression, AGC), and the
//! feedback sounds. The daemon starts one [`AudioEngine`] for its whole life and hands
//! [`AudioEngine::source`] / [`AudioEngine::sink`] to the LiveKit client for each call.
//!
//! Owns the sound card; must not touch the network, Matrix, LiveKit or GPIO.
//! Needs the Debian packages `libasound2-dev` and `libspeexdsp-dev` to build (and
//! `libasound2`, `libspeexdsp1` to run).

mod device;
mod dsp;
mod engine;
mod queue;
mod reference;
mod sounds;
mod speex;

pub use device::{
    list_devices, Capture, DeviceError, DeviceInfo, Granted, Io, Playback, PERIODS as ALSA_PERIODS,
    PERIOD_MS as ALSA_PERIOD_MS,
};
pub use dsp::{db_to_gain, VoiceProcessor, VoiceSettings, ECHO_TAIL_SAMPLES};
pub use engine::{
    volume_gain, AudioEngine, AudioError, AudioStats, DeviceStatus, EngineOptions, DOWNLINK_FRAMES,
    REFERENCE_WAIT, UPLINK_FRAMES,
};
pub use queue::{FrameQueue, Pop};
pub use sounds::{load_wav, Clip, SoundBank, SoundError, SoundPlayer};
pub use speex::SpeexError;
