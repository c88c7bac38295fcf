//! The two audio ends of a call, as traits: where microphone audio comes from and where
//! far-end audio goes. The ALSA driver ([`crate::audio`]) implements them for sound cards,
//! tests implement them with files. Everything is 48 kHz, mono, signed 16-bit, in 20 ms frames.

use std::time::{Duration, Instant};

/// Sample rate of every PCM frame in the device.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz mono (also one Opus frame).
pub const FRAME_SAMPLES: usize = 960;
/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Errors of a PCM end.
#[derive(Debug, thiserror::Error)]
pub enum PcmError {
    /// The stream has ended for good (end of a file, device closed for shutdown).
    #[error("audio stream ended")]
    Ended,
    /// The device failed; the message says which device and why.
    #[error("audio device {device}: {reason}")]
    Device { device: String, reason: String },
}

/// A source of microphone audio. `read_frame` blocks until the next 20 ms frame is
/// available (the device clock paces the caller) and fills `out` (length [`FRAME_SAMPLES`]).
pub trait PcmSource: Send {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<(), PcmError>;
}

/// A sink for far-end audio. `write_frame` takes one 20 ms frame and blocks while the
/// device's buffer is full (the device clock paces the caller).
pub trait PcmSink: Send {
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), PcmError>;
}

/// Paces a loop at one frame per 20 ms of wall-clock time, without drift.
#[derive(Debug)]
pub struct FramePacer {
    next: Instant,
}

impl Default for FramePacer {
    fn default() -> Self {
        Self::new()
    }
}

impl FramePacer {
    pub fn new() -> Self {
        Self {
            next: Instant::now(),
        }
    }

    /// Sleeps until the next frame is due. Falls back to "now" after a long stall so a
    /// stalled reader does not cause a burst.
    pub fn wait(&mut self) {
        self.next += FRAME_DURATION;
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > FRAME_DURATION * 5 {
            self.next = now;
        }
    }
}
