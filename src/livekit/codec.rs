//! Opus encoding of the microphone and decoding of remote tracks (libopus), plus the RFC 6464
//! audio level of a frame.
//!
//! Owns the codec state of each direction. Packet scheduling belongs to [`super::jitter`];
//! this module only turns its decisions into PCM. No I/O.

use std::collections::VecDeque;

use crate::pcm::{FRAME_SAMPLES, SAMPLE_RATE};

use super::jitter::{JitterBuffer, JitterConfig, Playout};

/// Largest Opus frame (120 ms at 48 kHz).
const MAX_OPUS_SAMPLES: usize = 5760;

/// A codec failure (libopus error text).
#[derive(Debug, thiserror::Error)]
#[error("opus: {0}")]
pub struct CodecError(String);

impl From<opus::Error> for CodecError {
    fn from(e: opus::Error) -> Self {
        CodecError(e.to_string())
    }
}

/// Mono 48 kHz voice encoder: 20 ms frames, in-band FEC on.
pub struct MicEncoder {
    enc: opus::Encoder,
    buf: Vec<u8>,
}

impl MicEncoder {
    pub fn new() -> Result<Self, CodecError> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_inband_fec(true)?;
        // FEC is only produced when the encoder expects some loss.
        enc.set_packet_loss_perc(10)?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        Ok(Self {
            enc,
            buf: vec![0; 1500],
        })
    }

    /// The encoder's algorithmic delay.
    pub fn lookahead(&mut self) -> Result<std::time::Duration, CodecError> {
        let samples = u64::try_from(self.enc.get_lookahead()?).unwrap_or(0);
        Ok(std::time::Duration::from_micros(
            samples * 1_000_000 / u64::from(SAMPLE_RATE),
        ))
    }

    /// Encodes one 20 ms frame into an Opus packet.
    pub fn encode(&mut self, frame: &[i16]) -> Result<Vec<u8>, CodecError> {
        let n = self.enc.encode(frame, &mut self.buf)?;
        Ok(self.buf[..n].to_vec())
    }
}

/// RFC 6464 audio level of a frame: `-dBov` in 0..=127 (0 loudest, 127 silence), as the
/// negative value str0m's writer takes, plus a simple voice-activity flag.
pub fn audio_level(frame: &[i16]) -> (i8, bool) {
    if frame.is_empty() {
        return (-127, false);
    }
    let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / frame.len() as f64).sqrt() / 32768.0;
    let dbov = if rms > 0.0 {
        20.0 * rms.log10()
    } else {
        -127.0
    };
    let level = dbov.clamp(-127.0, 0.0).round() as i8;
    (level, level > -50)
}

/// Per-track decode counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Frames decoded from received packets.
    pub frames_decoded: u64,
    /// Frames recovered from the next packet's in-band FEC.
    pub frames_fec: u64,
    /// Frames synthesised by packet loss concealment.
    pub frames_concealed: u64,
    /// Packets the decoder rejected.
    pub decode_errors: u64,
}

/// One remote audio track: jitter buffer, decoder, and the decoded samples not yet played.
pub struct TrackPlayout {
    jitter: JitterBuffer,
    decoder: opus::Decoder,
    pending: VecDeque<i16>,
    scratch: Vec<i16>,
    stats: DecodeStats,
}

impl TrackPlayout {
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            pending: VecDeque::with_capacity(MAX_OPUS_SAMPLES * 2),
            scratch: vec![0; MAX_OPUS_SAMPLES],
            stats: DecodeStats::default(),
        })
    }

    pub fn insert(&mut self, seq: u64, payload: Vec<u8>) {
        self.jitter.insert(seq, payload);
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    pub fn jitter_stats(&self) -> super::jitter::JitterStats {
        self.jitter.stats()
    }

    /// Produces the next 20 ms of this track into `out` (length [`FRAME_SAMPLES`]).
    pub fn next_frame(&mut self, out: &mut [i16]) {
        // Bounded: each jitter decision yields at least one 20 ms frame of samples.
        for _ in 0..4 {
            if self.pending.len() >= out.len() {
                break;
            }
            let produced = match self.jitter.pop() {
                Playout::Packet(p) => match self.decoder.decode(&p, &mut self.scratch, false) {
                    Ok(n) => {
                        self.stats.frames_decoded += 1;
                        n
                    }
                    Err(_) => {
                        self.stats.decode_errors += 1;
                        self.conceal()
                    }
                },
                Playout::Fec(next) => {
                    match self
                        .decoder
                        .decode(&next, &mut self.scratch[..FRAME_SAMPLES], true)
                    {
                        Ok(n) => {
                            self.stats.frames_fec += 1;
                            n
                        }
                        Err(_) => self.conceal(),
                    }
                }
                Playout::Conceal => self.conceal(),
                Playout::Silence => {
                    self.scratch[..FRAME_SAMPLES].fill(0);
                    FRAME_SAMPLES
                }
            };
            self.pending.extend(&self.scratch[..produced]);
        }
        let n = out.len().min(self.pending.len());
        for (o, s) in out.iter_mut().zip(self.pending.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
    }

    fn conceal(&mut self) -> usize {
        self.stats.frames_concealed += 1;
        match self
            .decoder
            .decode(&[], &mut self.scratch[..FRAME_SAMPLES], false)
        {
            Ok(n) => n,
            Err(_) => {
                self.scratch[..FRAME_SAMPLES].fill(0);
                FRAME_SAMPLES
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, frame_index: usize) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame_index * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
                ((2.0 * std::f32::consts::PI * freq * t).sin() * 12000.0) as i16
            })
            .collect()
    }

    fn energy(frame: &[i16]) -> f64 {
        frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / frame.len() as f64
    }

    #[test]
    fn audio_level_follows_loudness() {
        assert_eq!(audio_level(&[0; 960]), (-127, false));
        let (loud, active) = audio_level(&tone(440.0, 0));
        assert!((-12..=-6).contains(&loud), "{loud}");
        assert!(active);
        let quiet: Vec<i16> = tone(440.0, 0).iter().map(|s| s / 1000).collect();
        assert!(audio_level(&quiet).0 < -60);
    }

    #[test]
    fn encoded_tone_plays_back_with_fec_and_plc_on_loss() {
        let mut enc = MicEncoder::new().unwrap();
        let mut track = TrackPlayout::new().unwrap();
        let packets: Vec<Vec<u8>> = (0..60)
            .map(|i| enc.encode(&tone(440.0, i)).unwrap())
            .collect();
        // Lose packet 20 (recoverable by FEC from 21) and 40..43 (a burst: two frames are
        // concealed, the last one recovered by FEC from 43). Packets arrive one per tick.
        let mut out = vec![0i16; FRAME_SAMPLES];
        let mut loud_frames = 0;
        // Playout starts once 3 frames are buffered, so 62 ticks play frames 0..60.
        for tick in 0..62 {
            let lost = tick == 20 || (40..43).contains(&tick);
            if let Some(packet) = packets.get(tick).filter(|_| !lost) {
                track.insert(tick as u64, packet.clone());
            }
            track.next_frame(&mut out);
            if energy(&out) > 1e6 {
                loud_frames += 1;
            }
        }
        let s = track.stats();
        assert_eq!(s.frames_fec, 2, "{s:?}"); // seq 20 and 42
        assert_eq!(s.frames_concealed, 2, "{s:?}"); // seq 40, 41
        assert_eq!(s.frames_decoded, 56, "{s:?}");
        // All 60 frames carry the tone, the repaired ones included (bar codec start-up).
        assert!(loud_frames >= 58, "{loud_frames}");
    }
}
