//! [`PcmSource`]/[`PcmSink`] implementations for tests: a sine tone generator, a raw
//! s16le file reader, a recording sink (memory, optionally also a raw file) and a discarding
//! sink (benchmarks: no memory growth over a long call). All are
//! paced at real time (one frame per 20 ms) like a sound card.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use matrix_intercom::pcm::{FramePacer, PcmError, PcmSink, PcmSource, SAMPLE_RATE};

/// A continuous sine tone.
pub struct ToneSource {
    freq: f64,
    amplitude: f64,
    n: u64,
    pacer: FramePacer,
}

impl ToneSource {
    pub fn new(freq: f64, amplitude: i16) -> Self {
        Self {
            freq,
            amplitude: f64::from(amplitude),
            n: 0,
            pacer: FramePacer::new(),
        }
    }
}

impl PcmSource for ToneSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<(), PcmError> {
        self.pacer.wait();
        for s in out.iter_mut() {
            let t = self.n as f64 / f64::from(SAMPLE_RATE);
            *s = (self.amplitude * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as i16;
            self.n += 1;
        }
        Ok(())
    }
}

/// Raw mono s16le 48 kHz samples from a file; ends at the end of the file.
pub struct FileSource {
    data: Vec<i16>,
    pos: usize,
    pacer: FramePacer,
}

impl FileSource {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let data = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(Self {
            data,
            pos: 0,
            pacer: FramePacer::new(),
        })
    }
}

impl PcmSource for FileSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<(), PcmError> {
        if self.pos + out.len() > self.data.len() {
            return Err(PcmError::Ended);
        }
        self.pacer.wait();
        out.copy_from_slice(&self.data[self.pos..self.pos + out.len()]);
        self.pos += out.len();
        Ok(())
    }
}

/// Records everything written into shared memory (see [`RecordingSink::recording`]) and,
/// if given a path, into a raw s16le file.
pub struct RecordingSink {
    samples: Arc<Mutex<Vec<i16>>>,
    file: Option<BufWriter<File>>,
    pacer: FramePacer,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self {
            samples: Arc::default(),
            file: None,
            pacer: FramePacer::new(),
        }
    }

    pub fn with_file(path: &Path) -> std::io::Result<Self> {
        let mut s = Self::new();
        s.file = Some(BufWriter::new(File::create(path)?));
        Ok(s)
    }

    /// A handle on the recorded samples, readable while the sink is in use.
    pub fn recording(&self) -> Arc<Mutex<Vec<i16>>> {
        self.samples.clone()
    }
}

impl PcmSink for RecordingSink {
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), PcmError> {
        self.pacer.wait();
        self.samples.lock().unwrap().extend_from_slice(frame);
        if let Some(f) = &mut self.file {
            for s in frame {
                f.write_all(&s.to_le_bytes())
                    .map_err(|e| PcmError::Device {
                        device: "recording file".into(),
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(())
    }
}

/// Takes every frame at real-time pace and drops it (a sound card nobody listens to).
pub struct DiscardSink {
    pacer: FramePacer,
}

impl DiscardSink {
    pub fn new() -> Self {
        Self {
            pacer: FramePacer::new(),
        }
    }
}

impl PcmSink for DiscardSink {
    fn write_frame(&mut self, _frame: &[i16]) -> Result<(), PcmError> {
        self.pacer.wait();
        Ok(())
    }
}
