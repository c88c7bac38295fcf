//! Feedback sounds: built-in tone sequences, optionally replaced by WAV files from config, and
//! the player that mixes them into the playback stream frame by frame.
//!
//! Owns the rendered sample buffers and the play position; reads WAV files once at start.
//! Knows nothing about ALSA or calls; `crate::machine::Sound` names the sounds.

use super::speex::Resampler;
use crate::config::SoundsConfig;
use crate::machine::Sound;
use crate::pcm::SAMPLE_RATE;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest WAV accepted as a feedback sound.
pub const MAX_SOUND_SECONDS: u32 = 30;
/// A repeating sound stops by itself after this long, even if nobody stops it.
pub const MAX_REPEAT_SECONDS: u32 = 600;
/// Peak level of built-in tones (about -10 dBFS).
const TONE_AMPLITUDE: f32 = 0.3 * 32767.0;

/// Why a configured sound file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SoundError {
    #[error("cannot read sound file {path}: {source} (use a PCM WAV file)")]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("sound file {path} is longer than {MAX_SOUND_SECONDS} s; use a short clip")]
    TooLong { path: PathBuf },
    #[error("sound file {path} is empty or has an invalid format")]
    Empty { path: PathBuf },
    #[error("speexdsp: {0}")]
    Speex(#[from] super::speex::SpeexError),
}

/// A rendered sound: 48 kHz mono samples, and for repeating ones the silence between plays.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub samples: Arc<[i16]>,
    /// `Some(gap)`: repeat after `gap` samples of silence until stopped.
    pub repeat_gap: Option<usize>,
}

const ALL: [Sound; 9] = [
    Sound::Button,
    Sound::Ringing,
    Sound::Joined,
    Sound::MemberLeft,
    Sound::CallEnded,
    Sound::NoAnswer,
    Sound::Warning,
    Sound::Incoming,
    Sound::Error,
];

/// All nine sounds, rendered.
#[derive(Debug, Clone)]
pub struct SoundBank {
    clips: Vec<(Sound, Clip)>,
}

impl SoundBank {
    /// Built-in tones, with each sound that has a file in `cfg` replaced by that file. A file
    /// that cannot be used is reported in the returned list and the built-in tone is kept.
    pub fn load(cfg: &SoundsConfig) -> (Self, Vec<SoundError>) {
        let mut errors = Vec::new();
        let clips = ALL
            .iter()
            .map(|&s| {
                let mut clip = builtin(s);
                if let Some(path) = configured_path(cfg, s) {
                    match load_wav(path) {
                        Ok(samples) => clip.samples = samples.into(),
                        Err(e) => errors.push(e),
                    }
                }
                (s, clip)
            })
            .collect();
        (Self { clips }, errors)
    }

    pub fn builtin() -> Self {
        Self {
            clips: ALL.iter().map(|&s| (s, builtin(s))).collect(),
        }
    }

    pub fn get(&self, s: Sound) -> &Clip {
        &self
            .clips
            .iter()
            .find(|(k, _)| *k == s)
            .expect("every sound is rendered")
            .1
    }
}

fn configured_path(cfg: &SoundsConfig, s: Sound) -> Option<&Path> {
    match s {
        Sound::Button => cfg.button.as_deref(),
        Sound::Ringing => cfg.ringing.as_deref(),
        Sound::Joined => cfg.joined.as_deref(),
        Sound::MemberLeft => cfg.member_left.as_deref(),
        Sound::CallEnded => cfg.call_ended.as_deref(),
        Sound::NoAnswer => cfg.no_answer.as_deref(),
        Sound::Warning => cfg.warning.as_deref(),
        Sound::Incoming => cfg.incoming.as_deref(),
        Sound::Error => cfg.error.as_deref(),
    }
}

/// A tone segment: frequencies (summed), duration in ms; no frequency = silence.
type Seg = (&'static [f32], u32);

fn render(segs: &[Seg]) -> Vec<i16> {
    let mut out = Vec::new();
    for &(freqs, ms) in segs {
        let n = (SAMPLE_RATE * ms / 1000) as usize;
        let fade = (SAMPLE_RATE as usize / 200).min(n / 2); // 5 ms ramps: no clicks
        for i in 0..n {
            let t = i as f32 / SAMPLE_RATE as f32;
            let mut v: f32 = freqs
                .iter()
                .map(|f| (2.0 * std::f32::consts::PI * f * t).sin())
                .sum();
            if !freqs.is_empty() {
                v /= freqs.len() as f32;
            }
            let ramp = if i < fade {
                i as f32 / fade as f32
            } else if i >= n - fade {
                (n - 1 - i) as f32 / fade as f32
            } else {
                1.0
            };
            out.push((v * ramp * TONE_AMPLITUDE) as i16);
        }
    }
    out
}

fn builtin(s: Sound) -> Clip {
    let ms = |m: u32| (SAMPLE_RATE * m / 1000) as usize;
    let (segs, repeat_gap): (&[Seg], Option<usize>) = match s {
        Sound::Button => (&[(&[1000.0], 80)], None),
        // Ring-back (440 + 480 Hz, 1 s) every 4 s while waiting for an answer.
        Sound::Ringing => (&[(&[440.0, 480.0], 1000)], Some(ms(3000))),
        Sound::Joined => (&[(&[660.0], 100), (&[880.0], 100), (&[1320.0], 150)], None),
        Sound::MemberLeft => (&[(&[880.0], 120), (&[660.0], 160)], None),
        Sound::CallEnded => (&[(&[880.0], 150), (&[660.0], 150), (&[440.0], 250)], None),
        // Busy-like 480 + 620 Hz, three times.
        Sound::NoAnswer => (
            &[
                (&[480.0, 620.0], 400),
                (&[], 300),
                (&[480.0, 620.0], 400),
                (&[], 300),
                (&[480.0, 620.0], 400),
            ],
            None,
        ),
        Sound::Warning => (
            &[
                (&[1400.0], 100),
                (&[], 100),
                (&[1400.0], 100),
                (&[], 100),
                (&[1400.0], 100),
            ],
            None,
        ),
        // Someone else is calling: a chime repeating until the machine stops it.
        Sound::Incoming => (
            &[
                (&[1200.0], 150),
                (&[900.0], 150),
                (&[1200.0], 150),
                (&[900.0], 150),
            ],
            Some(ms(2000)),
        ),
        Sound::Error => (&[(&[300.0], 300), (&[], 150), (&[300.0], 500)], None),
    };
    Clip {
        samples: render(segs).into(),
        repeat_gap,
    }
}

/// Reads a WAV file as 48 kHz mono.
pub fn load_wav(path: &Path) -> Result<Vec<i16>, SoundError> {
    let wav_err = |source| SoundError::Wav {
        path: path.to_owned(),
        source,
    };
    let reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let ch = usize::from(spec.channels);
    if ch == 0 || spec.sample_rate == 0 {
        return Err(SoundError::Empty {
            path: path.to_owned(),
        });
    }
    if reader.duration() > MAX_SOUND_SECONDS * spec.sample_rate {
        return Err(SoundError::TooLong {
            path: path.to_owned(),
        });
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|r| r.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let mono: Vec<i16> = interleaved
        .chunks_exact(ch)
        .map(|c| {
            let v = c.iter().sum::<f32>() / ch as f32;
            (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect();
    if mono.is_empty() {
        return Err(SoundError::Empty {
            path: path.to_owned(),
        });
    }
    if spec.sample_rate == SAMPLE_RATE {
        return Ok(mono);
    }
    let mut r = Resampler::new(spec.sample_rate, SAMPLE_RATE, 5)?;
    let mut out =
        Vec::with_capacity(mono.len() * SAMPLE_RATE as usize / spec.sample_rate as usize + 1);
    r.process(&mono, &mut out);
    // Flush the resampler's delay line with silence so the tail is not cut.
    r.process(&vec![0; spec.sample_rate as usize / 50], &mut out);
    Ok(out)
}

/// Plays one clip at a time into the playback mix.
#[derive(Debug, Default)]
pub struct SoundPlayer {
    current: Option<(Clip, usize, usize)>, // clip, position in the cycle, samples played
}

impl SoundPlayer {
    /// Starts `clip` from the beginning, replacing whatever played.
    pub fn start(&mut self, clip: Clip) {
        self.current = Some((clip, 0, 0));
    }

    pub fn stop(&mut self) {
        self.current = None;
    }

    pub fn is_playing(&self) -> bool {
        self.current.is_some()
    }

    /// Adds the next `out.len()` samples of the sound to `out` (saturating).
    pub fn mix_into(&mut self, out: &mut [i16]) {
        let Some((clip, pos, played)) = &mut self.current else {
            return;
        };
        let len = clip.samples.len();
        let cycle = len + clip.repeat_gap.unwrap_or(0);
        for o in out.iter_mut() {
            if *pos >= cycle {
                if clip.repeat_gap.is_none()
                    || *played >= (MAX_REPEAT_SECONDS * SAMPLE_RATE) as usize
                {
                    self.current = None;
                    return;
                }
                *pos = 0;
            }
            if *pos < len {
                *o = o.saturating_add(clip.samples[*pos]);
            }
            *pos += 1;
            *played += 1;
        }
        if clip.repeat_gap.is_none() && *pos >= cycle {
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_sound_ends_and_ringing_repeats() {
        let bank = SoundBank::builtin();
        let mut p = SoundPlayer::default();
        p.start(bank.get(Sound::Button).clone());
        let mut buf = vec![0i16; 960];
        for _ in 0..5 {
            p.mix_into(&mut buf);
        }
        assert!(!p.is_playing());
        p.start(bank.get(Sound::Ringing).clone());
        // 10 s of frames: still ringing, and the second ring (at 4 s) is audible.
        let mut energy_at_4s = 0i64;
        for i in 0..500 {
            buf.fill(0);
            p.mix_into(&mut buf);
            if i == 205 {
                energy_at_4s = buf.iter().map(|&s| i64::from(s).abs()).sum();
            }
        }
        assert!(p.is_playing());
        assert!(energy_at_4s > 0);
        p.stop();
        assert!(!p.is_playing());
    }

    #[test]
    fn a_missing_wav_is_reported_and_the_builtin_tone_kept() {
        let cfg = SoundsConfig {
            joined: Some("/nonexistent/joined.wav".into()),
            ..Default::default()
        };
        let (bank, errors) = SoundBank::load(&cfg);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("joined.wav"));
        assert_eq!(bank.get(Sound::Joined), &builtin(Sound::Joined));
    }

    #[test]
    fn a_44k1_stereo_wav_is_converted_to_48k_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..44_100 {
            w.write_sample(1000i16).unwrap();
            w.write_sample(3000i16).unwrap();
        }
        w.finalize().unwrap();
        let s = load_wav(&path).unwrap();
        assert!(
            (s.len() as i64 - 48_000).abs() < 1000,
            "{} samples",
            s.len()
        );
        assert!((s[24_000] as i32 - 2000).abs() < 30, "{}", s[24_000]);
    }
}
