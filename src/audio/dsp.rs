//! Voice processing of the microphone signal: mic gain, acoustic echo cancellation, noise
//! suppression and automatic gain control, each stage switchable by config.
//!
//! Owns the speexdsp states; gets 20 ms frames from the capture thread and the matching
//! far-end frames (what the speaker played) from the playback thread. No I/O here.
//!
//! Why speexdsp and not the WebRTC module: measured with `benches/aec-compare/run.sh`
//! (48 kHz, speech-like noise bursts, echo path 30 ms delay at -6 dB plus reverb taps to
//! 90 ms, -60 dBFS noise floor, no near-end talker; ERLE over the last 10 of 20 s; "near kept"
//! is how much of a near-end talker survives double talk):
//!
//! | configuration                                   | ERLE dB | near kept dB |
//! |-------------------------------------------------|--------:|-------------:|
//! | speexdsp MDF only, 20 ms frames, 200 ms tail    |    32.4 |         -0.7 |
//! | speexdsp MDF + preprocess (residual echo + NS)  |    48.7 |         -1.0 |
//! | WebRTC 0.3 (Debian) AEC moderate                |    39.7 |         -5.6 |
//! | WebRTC 0.3 AEC high + NS                        |    51.8 |         -8.5 |
//!
//! WebRTC 0.3 removes ~3 dB more echo, but mostly by non-linear suppression: it also cuts the
//! visitor's voice by 6-9 dB whenever the resident talks, while speexdsp keeps it within 1 dB.
//! Both are far beyond the 20 dB needed; speexdsp has a plain C API in every Debian
//! architecture (no C++ shim, no bindgen), so it is the one used. Through the whole engine
//! and alsa-lib (`tests/audio_echo_loop.rs`) the echo comes out 48-55 dB down.
//!
//! Cost (`cargo bench --bench audio`): the full capture chain takes about 50-90 ms of one
//! x86-64 core per second of audio at 48 kHz with a 200 ms tail; running it at 16 kHz would
//! cost about a third (measured 15 ms/s) if small boards need it.

use super::speex::{EchoCanceller, PreprocessSettings, Preprocessor, SpeexError};
use crate::config::AudioConfig;
use crate::pcm::{FRAME_SAMPLES, SAMPLE_RATE};

/// Echo tail the canceller models: covers ALSA buffering on both sides plus room reverb.
pub const ECHO_TAIL_SAMPLES: usize = SAMPLE_RATE as usize / 5; // 200 ms

/// Which stages run, and the fixed mic gain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceSettings {
    pub echo_cancellation: bool,
    pub noise_suppression: bool,
    pub auto_gain: bool,
    /// Fixed gain applied before everything else, in dB (clamped to -20..=30).
    pub mic_gain_db: f32,
}

impl From<&AudioConfig> for VoiceSettings {
    fn from(c: &AudioConfig) -> Self {
        Self {
            echo_cancellation: c.echo_cancellation,
            noise_suppression: c.noise_suppression,
            auto_gain: c.auto_gain,
            mic_gain_db: f32::from(c.mic_gain_db),
        }
    }
}

/// The microphone processing chain for 48 kHz mono 20 ms frames.
pub struct VoiceProcessor {
    // Field order matters: the preprocessor may point at the echo state, so it drops first.
    pre: Option<Preprocessor>,
    aec: Option<EchoCanceller>,
    gain: f32,
    scratch: Vec<i16>,
}

impl VoiceProcessor {
    pub fn new(s: VoiceSettings) -> Result<Self, SpeexError> {
        let aec = if s.echo_cancellation {
            Some(EchoCanceller::new(
                FRAME_SAMPLES,
                ECHO_TAIL_SAMPLES,
                SAMPLE_RATE,
            )?)
        } else {
            None
        };
        // The preprocessor also carries the residual echo suppressor, so it runs whenever
        // any of the three stages is on; its own parts are switched individually.
        let pre = if s.echo_cancellation || s.noise_suppression || s.auto_gain {
            let mut p = Preprocessor::new(
                FRAME_SAMPLES,
                SAMPLE_RATE,
                PreprocessSettings {
                    denoise: s.noise_suppression || s.echo_cancellation,
                    noise_suppress_db: if s.noise_suppression { -25 } else { -1 },
                    agc: s.auto_gain,
                    agc_level: 8000.0,
                    agc_max_gain_db: 20,
                },
            )?;
            p.attach_echo(aec.as_ref());
            Some(p)
        } else {
            None
        };
        Ok(Self {
            pre,
            aec,
            gain: db_to_gain(s.mic_gain_db.clamp(-20.0, 30.0)),
            scratch: vec![0; FRAME_SAMPLES],
        })
    }

    /// Processes one microphone frame in place. `far` is what the speaker played in the
    /// matching 20 ms (silence when nothing played).
    pub fn process(&mut self, mic: &mut [i16], far: &[i16]) {
        if self.gain != 1.0 {
            apply_gain(mic, self.gain);
        }
        if let Some(aec) = &mut self.aec {
            self.scratch.copy_from_slice(mic);
            aec.cancel(&self.scratch, far, mic);
        }
        if let Some(pre) = &mut self.pre {
            pre.run(mic);
        }
    }

    /// Forgets the learned echo path (after a device reopen the delay changes).
    pub fn reset_echo(&mut self) {
        if let Some(aec) = &mut self.aec {
            aec.reset();
        }
    }
}

/// Linear gain of a dB value.
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Multiplies samples by `gain`, saturating.
pub fn apply_gain(x: &mut [i16], gain: f32) {
    for s in x {
        *s = (f32::from(*s) * gain).round().clamp(-32768.0, 32767.0) as i16;
    }
}
