//! ALSA PCM devices by name: opening, hardware parameter negotiation, conversion to and from
//! the device's 48 kHz mono 20 ms frames, and xrun recovery.
//!
//! Owns one `alsa::PCM` per value; used from one dedicated thread (blocking I/O, no async).
//! Knows nothing about calls, sounds or voice processing.

use super::speex::Resampler;
use crate::pcm::{FRAME_SAMPLES, SAMPLE_RATE};
use alsa::pcm::{Access, Format, Frames, HwParams, PCM};
use alsa::{Direction, ValueOr};

/// Period we ask for: 10 ms.
pub const PERIOD_MS: u32 = 10;
/// Periods per buffer we ask for.
pub const PERIODS: u32 = 4;

/// A frame count as alsa-lib takes it (a C `long`: 32 bits on armv7, 64 on aarch64).
fn frames(n: u64) -> Frames {
    Frames::try_from(n).unwrap_or(Frames::MAX)
}

/// What can go wrong with a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device could not be opened or configured; retrying later may help (unplugged,
    /// busy) or not (misspelled name: check `matrix-intercom list-audio`).
    #[error("cannot open ALSA {dir} device {name:?}: {source} (check the name with `matrix-intercom list-audio`)")]
    Open {
        dir: &'static str,
        name: String,
        #[source]
        source: alsa::Error,
    },
    /// The device refused 16-bit interleaved samples; use a `plughw:` or `default` name.
    #[error("ALSA {dir} device {name:?} cannot do {what}; use a plughw:CARD=…,DEV=… name so alsa-lib converts")]
    Unsupported {
        dir: &'static str,
        name: String,
        what: String,
    },
    /// The device failed during I/O in a way `prepare` cannot fix (e.g. unplugged).
    #[error("ALSA {dir} device {name:?} failed: {source}")]
    Gone {
        dir: &'static str,
        name: String,
        #[source]
        source: alsa::Error,
    },
    #[error("speexdsp: {0}")]
    Speex(#[from] super::speex::SpeexError),
}

/// What the device granted, as read back with `hw_params_current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub rate: u32,
    pub channels: u32,
    pub period: u64,
    pub buffer: u64,
}

/// Result of one frame read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// A full frame was transferred.
    Frame,
    /// The device delivered nothing (end of a capture file): no frame this time.
    Empty,
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Capture => "capture",
        Direction::Playback => "playback",
    }
}

/// Errors `prepare` fixes: xrun (EPIPE), suspend (ESTRPIPE), and EINTR.
fn recoverable(e: &alsa::Error) -> bool {
    matches!(
        e.errno(),
        libc::EPIPE | libc::ESTRPIPE | libc::EINTR | libc::EAGAIN
    )
}

struct Pcm {
    pcm: PCM,
    name: String,
    dir: Direction,
    granted: Granted,
    xruns: u64,
}

impl Pcm {
    fn open(name: &str, dir: Direction) -> Result<Self, DeviceError> {
        let d = dir_name(dir);
        let open_err = |source| DeviceError::Open {
            dir: d,
            name: name.to_owned(),
            source,
        };
        if name.contains('\0') {
            return Err(open_err(alsa::Error::new("snd_pcm_open", libc::EINVAL)));
        }
        let pcm = PCM::new(name, dir, false).map_err(open_err)?;
        {
            let hw = HwParams::any(&pcm).map_err(open_err)?;
            let unsupported = |what: &str| DeviceError::Unsupported {
                dir: d,
                name: name.to_owned(),
                what: what.to_owned(),
            };
            hw.set_access(Access::RWInterleaved)
                .map_err(|_| unsupported("interleaved read/write access"))?;
            hw.set_format(Format::s16())
                .map_err(|_| unsupported("signed 16-bit native-endian samples"))?;
            hw.set_channels_near(1).map_err(open_err)?;
            let rate = hw
                .set_rate_near(SAMPLE_RATE, ValueOr::Nearest)
                .map_err(open_err)?;
            let period = hw
                .set_period_size_near(frames(u64::from(rate * PERIOD_MS / 1000)), ValueOr::Nearest)
                .map_err(open_err)?;
            hw.set_buffer_size_near(period.saturating_mul(frames(u64::from(PERIODS))))
                .map_err(open_err)?;
            pcm.hw_params(&hw).map_err(open_err)?;
        }
        let granted = {
            let hw = pcm.hw_params_current().map_err(open_err)?;
            Granted {
                rate: hw.get_rate().map_err(open_err)?,
                channels: hw.get_channels().map_err(open_err)?,
                period: hw.get_period_size().map_err(open_err)? as u64,
                buffer: hw.get_buffer_size().map_err(open_err)? as u64,
            }
        };
        if granted.channels == 0 || granted.rate == 0 {
            return Err(DeviceError::Unsupported {
                dir: d,
                name: name.to_owned(),
                what: format!("a usable configuration (granted {granted:?})"),
            });
        }
        {
            let sw = pcm.sw_params_current().map_err(open_err)?;
            sw.set_avail_min(frames(granted.period)).map_err(open_err)?;
            if dir == Direction::Playback {
                // Start once the buffer is nearly full (librespot's rule).
                let start = granted
                    .buffer
                    .saturating_sub(granted.period)
                    .max(granted.period);
                sw.set_start_threshold(frames(start)).map_err(open_err)?;
            }
            pcm.sw_params(&sw).map_err(open_err)?;
        }
        tracing::info!(
            device = name,
            direction = d,
            rate = granted.rate,
            channels = granted.channels,
            period_frames = granted.period,
            buffer_frames = granted.buffer,
            "ALSA device opened (asked for {SAMPLE_RATE} Hz mono S16, {PERIOD_MS} ms periods x {PERIODS})"
        );
        Ok(Self {
            pcm,
            name: name.to_owned(),
            dir,
            granted,
            xruns: 0,
        })
    }

    /// Handles an I/O error: recoverable ones are fixed and counted (`Ok`), others are `Gone`.
    fn recover(&mut self, e: alsa::Error) -> Result<(), DeviceError> {
        if recoverable(&e) {
            if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE {
                self.xruns += 1;
                tracing::debug!(device = %self.name, xruns = self.xruns, "ALSA xrun, recovering");
            }
            if self.pcm.try_recover(e, true).is_ok() {
                return Ok(());
            }
            if self.pcm.prepare().is_ok() {
                return Ok(());
            }
        }
        Err(DeviceError::Gone {
            dir: dir_name(self.dir),
            name: self.name.clone(),
            source: e,
        })
    }
}

/// A capture device delivering 48 kHz mono frames whatever the device's own format.
pub struct Capture {
    pcm: Pcm,
    raw: Vec<i16>,
    mono: Vec<i16>,
    resampler: Option<Resampler>,
    fifo: Vec<i16>,
}

impl Capture {
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let pcm = Pcm::open(name, Direction::Capture)?;
        let g = pcm.granted;
        let resampler = if g.rate != SAMPLE_RATE {
            Some(Resampler::new(g.rate, SAMPLE_RATE, 5)?)
        } else {
            None
        };
        Ok(Self {
            raw: vec![0; g.period as usize * g.channels as usize],
            mono: Vec::with_capacity(g.period as usize),
            resampler,
            fifo: Vec::with_capacity(FRAME_SAMPLES * 3),
            pcm,
        })
    }

    pub fn granted(&self) -> Granted {
        self.pcm.granted
    }

    /// Overruns recovered so far.
    pub fn xruns(&self) -> u64 {
        self.pcm.xruns
    }

    /// Reads one 48 kHz mono frame into `out`; blocks on the device clock.
    pub fn read_frame(&mut self, out: &mut [i16]) -> Result<Io, DeviceError> {
        let ch = self.pcm.granted.channels as usize;
        while self.fifo.len() < FRAME_SAMPLES {
            let got = {
                let io = self.pcm.pcm.io_i16().map_err(|source| DeviceError::Gone {
                    dir: "capture",
                    name: self.pcm.name.clone(),
                    source,
                })?;
                io.readi(&mut self.raw)
            };
            let frames = match got {
                Ok(0) => return Ok(Io::Empty),
                Ok(n) => n,
                Err(e) => {
                    self.pcm.recover(e)?;
                    continue;
                }
            };
            self.mono.clear();
            self.mono
                .extend(self.raw[..frames * ch].chunks_exact(ch).map(downmix));
            match &mut self.resampler {
                Some(r) => r.process(&self.mono, &mut self.fifo),
                None => self.fifo.extend_from_slice(&self.mono),
            }
        }
        out.copy_from_slice(&self.fifo[..FRAME_SAMPLES]);
        self.fifo.drain(..FRAME_SAMPLES);
        Ok(Io::Frame)
    }
}

fn downmix(frame: &[i16]) -> i16 {
    if frame.len() == 1 {
        return frame[0];
    }
    let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
    (sum / frame.len() as i32) as i16
}

/// A playback device taking 48 kHz mono frames whatever the device's own format.
pub struct Playback {
    pcm: Pcm,
    resampled: Vec<i16>,
    resampler: Option<Resampler>,
    raw: Vec<i16>,
}

impl Playback {
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let pcm = Pcm::open(name, Direction::Playback)?;
        let g = pcm.granted;
        let resampler = if g.rate != SAMPLE_RATE {
            Some(Resampler::new(SAMPLE_RATE, g.rate, 5)?)
        } else {
            None
        };
        Ok(Self {
            pcm,
            resampled: Vec::with_capacity(FRAME_SAMPLES * 2),
            resampler,
            raw: Vec::new(),
        })
    }

    pub fn granted(&self) -> Granted {
        self.pcm.granted
    }

    /// Underruns recovered so far.
    pub fn xruns(&self) -> u64 {
        self.pcm.xruns
    }

    /// Writes one 48 kHz mono frame; blocks while the device buffer is full.
    pub fn write_frame(&mut self, frame: &[i16]) -> Result<(), DeviceError> {
        let ch = self.pcm.granted.channels as usize;
        let mono: &[i16] = match &mut self.resampler {
            Some(r) => {
                self.resampled.clear();
                r.process(frame, &mut self.resampled);
                &self.resampled
            }
            None => frame,
        };
        self.raw.clear();
        for &s in mono {
            self.raw.extend(std::iter::repeat_n(s, ch));
        }
        let mut done = 0;
        let total = self.raw.len() / ch;
        let mut attempts = 0;
        while done < total {
            let r = {
                let io = self.pcm.pcm.io_i16().map_err(|source| DeviceError::Gone {
                    dir: "playback",
                    name: self.pcm.name.clone(),
                    source,
                })?;
                io.writei(&self.raw[done * ch..])
            };
            match r {
                Ok(n) => done += n,
                Err(e) => {
                    attempts += 1;
                    if attempts > 8 {
                        return Err(DeviceError::Gone {
                            dir: "playback",
                            name: self.pcm.name.clone(),
                            source: e,
                        });
                    }
                    self.pcm.recover(e)?;
                }
            }
        }
        Ok(())
    }
}

/// One PCM name as `aplay -L` / `arecord -L` list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub description: String,
    /// `Some(Capture|Playback)` when the device only works one way.
    pub direction: Option<Direction>,
}

/// Lists PCM names (`snd_device_name_hint`), like `aplay -L`.
pub fn list_devices() -> Result<Vec<DeviceInfo>, alsa::Error> {
    let hints = alsa::device_name::HintIter::new_str(None, "pcm")?;
    Ok(hints
        .filter_map(|h| {
            Some(DeviceInfo {
                name: h.name?,
                description: h.desc.unwrap_or_default().replace('\n', " — "),
                direction: h.direction,
            })
        })
        .collect())
}
