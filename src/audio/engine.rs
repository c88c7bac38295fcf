//! The audio engine: owns the capture and playback devices for the life of the daemon, one
//! thread each, and hands call audio to and from whoever is in a call through `PcmSource` /
//! `PcmSink` adapters.
//!
//! Capture thread: device → mic gain/AEC/NS/AGC → the active call source (bounded queue).
//! Playback thread: the active call sink (bounded queue) + feedback sound → volume → device,
//! and every played frame to the AEC as far-end reference. Devices that fail are reopened with
//! back-off while the call goes on (silence is sent meanwhile). This module must not touch
//! Matrix, LiveKit or GPIO.

use super::device::{Capture, DeviceError, Granted, Io, Playback};
use super::dsp::{VoiceProcessor, VoiceSettings};
use super::queue::{FrameQueue, Pop};
use super::reference::Reference;
use super::sounds::{SoundBank, SoundPlayer};
use crate::config::AudioConfig;
use crate::machine::Sound;
use crate::pcm::{FramePacer, PcmError, PcmSink, PcmSource, FRAME_DURATION, FRAME_SAMPLES};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Frames buffered toward the call (200 ms); older ones are dropped when the reader stalls.
pub const UPLINK_FRAMES: usize = 10;
/// Frames buffered from the call to the speaker (120 ms of jitter room).
pub const DOWNLINK_FRAMES: usize = 6;
/// Longest wait of the capture side for the far-end frame it pairs with.
pub const REFERENCE_WAIT: Duration = Duration::from_millis(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("voice processing: {0}")]
    Speex(#[from] super::speex::SpeexError),
    #[error("cannot start audio thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Options for devices without a clock (alsa-lib's `null`/`file` plugins): pace the thread
/// with the wall clock instead of the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    pub pace_capture: bool,
    pub pace_playback: bool,
}

/// State of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    Opening,
    Open(Granted),
    /// Failed; being reopened with back-off. The message says why.
    Failed(String),
}

/// Counters for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStats {
    pub capture: DeviceStatus,
    pub playback: DeviceStatus,
    pub captured_frames: u64,
    pub played_frames: u64,
    /// xruns recovered by `prepare` (capture overruns, playback underruns).
    pub capture_xruns: u64,
    pub playback_xruns: u64,
    /// Frames dropped because the call side did not read them in time.
    pub uplink_dropped: u64,
    /// Frames dropped because the call side wrote faster than the speaker plays.
    pub downlink_dropped: u64,
    /// Played frames for which an attached call sink had nothing (filled with silence).
    pub downlink_underruns: u64,
    pub capture_reopens: u64,
    pub playback_reopens: u64,
    /// Times the echo canceller's far-end reference was realigned.
    pub reference_resyncs: u64,
}

#[derive(Default)]
struct Counters {
    captured: AtomicU64,
    played: AtomicU64,
    capture_xruns: AtomicU64,
    playback_xruns: AtomicU64,
    uplink_dropped: AtomicU64,
    downlink_dropped: AtomicU64,
    downlink_underruns: AtomicU64,
    capture_reopens: AtomicU64,
    playback_reopens: AtomicU64,
}

enum SoundCmd {
    Play(Sound),
    Stop,
}

struct Shared {
    stopping: Mutex<bool>,
    stop_cond: Condvar,
    uplink: Mutex<Option<Arc<FrameQueue>>>,
    downlink: Mutex<Option<Arc<FrameQueue>>>,
    reference: Mutex<Reference>,
    reference_pushed: Condvar,
    sound_cmd: Mutex<Option<SoundCmd>>,
    capture_status: Mutex<DeviceStatus>,
    playback_status: Mutex<DeviceStatus>,
    n: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    /// Sleeps up to `d`, returning early (true) when the engine stops.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.stopping);
        while !*g {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .stop_cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Owns both devices and their threads (see module doc).
pub struct AudioEngine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl AudioEngine {
    /// Starts both device threads. Devices that cannot be opened yet are retried in the
    /// background (see [`AudioEngine::stats`]); bad sound files are logged and replaced by the
    /// built-in tones.
    pub fn start(cfg: &AudioConfig) -> Result<Self, AudioError> {
        Self::start_with_options(cfg, EngineOptions::default())
    }

    pub fn start_with_options(cfg: &AudioConfig, opts: EngineOptions) -> Result<Self, AudioError> {
        let (bank, errors) = SoundBank::load(&cfg.sounds);
        for e in errors {
            tracing::warn!("{e}; using the built-in sound instead");
        }
        let voice = VoiceProcessor::new(VoiceSettings::from(cfg))?;
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            stop_cond: Condvar::new(),
            uplink: Mutex::new(None),
            downlink: Mutex::new(None),
            reference: Mutex::new(Reference::default()),
            reference_pushed: Condvar::new(),
            sound_cmd: Mutex::new(None),
            capture_status: Mutex::new(DeviceStatus::Opening),
            playback_status: Mutex::new(DeviceStatus::Opening),
            n: Counters::default(),
        });
        let volume = volume_gain(cfg.volume);
        let mut threads = Vec::new();
        let (s, name) = (shared.clone(), cfg.capture.clone());
        threads.push(
            std::thread::Builder::new()
                .name("audio-capture".into())
                .spawn(move || capture_thread(&s, &name, voice, opts.pace_capture))?,
        );
        let (s, name) = (shared.clone(), cfg.playback.clone());
        let spawned = std::thread::Builder::new()
            .name("audio-playback".into())
            .spawn(move || playback_thread(&s, &name, bank, volume, opts.pace_playback));
        let mut engine = Self { shared, threads };
        engine.threads.push(spawned?);
        Ok(engine)
    }

    /// A source of processed microphone frames for a call. Replaces (ends) any earlier one;
    /// dropping it stops the flow. Frames the reader does not take in time are dropped
    /// (oldest first) and counted in `uplink_dropped`.
    pub fn source(&self) -> Box<dyn PcmSource> {
        let q = Arc::new(FrameQueue::new(UPLINK_FRAMES));
        if let Some(old) = lock(&self.shared.uplink).replace(q.clone()) {
            self.shared
                .n
                .uplink_dropped
                .fetch_add(old.dropped(), Ordering::Relaxed);
            old.close();
        }
        Box::new(CallSource {
            q,
            shared: self.shared.clone(),
        })
    }

    /// A sink for the call's far-end audio, mixed with feedback sounds on the speaker.
    /// Replaces (ends) any earlier one. `write_frame` blocks while the buffer is full.
    pub fn sink(&self) -> Box<dyn PcmSink> {
        let q = Arc::new(FrameQueue::new(DOWNLINK_FRAMES));
        if let Some(old) = lock(&self.shared.downlink).replace(q.clone()) {
            self.shared
                .n
                .downlink_dropped
                .fetch_add(old.dropped(), Ordering::Relaxed);
            old.close();
        }
        Box::new(CallSink {
            q,
            shared: self.shared.clone(),
        })
    }

    /// Plays a feedback sound, replacing the one playing. Ringing and Incoming repeat until
    /// [`AudioEngine::stop_sound`] (or another sound).
    pub fn play(&self, sound: Sound) {
        *lock(&self.shared.sound_cmd) = Some(SoundCmd::Play(sound));
    }

    pub fn stop_sound(&self) {
        *lock(&self.shared.sound_cmd) = Some(SoundCmd::Stop);
    }

    pub fn stats(&self) -> AudioStats {
        let n = &self.shared.n;
        let live = |m: &Mutex<Option<Arc<FrameQueue>>>| lock(m).as_ref().map_or(0, |q| q.dropped());
        AudioStats {
            capture: lock(&self.shared.capture_status).clone(),
            playback: lock(&self.shared.playback_status).clone(),
            captured_frames: n.captured.load(Ordering::Relaxed),
            played_frames: n.played.load(Ordering::Relaxed),
            capture_xruns: n.capture_xruns.load(Ordering::Relaxed),
            playback_xruns: n.playback_xruns.load(Ordering::Relaxed),
            uplink_dropped: n.uplink_dropped.load(Ordering::Relaxed) + live(&self.shared.uplink),
            downlink_dropped: n.downlink_dropped.load(Ordering::Relaxed)
                + live(&self.shared.downlink),
            downlink_underruns: n.downlink_underruns.load(Ordering::Relaxed),
            capture_reopens: n.capture_reopens.load(Ordering::Relaxed),
            playback_reopens: n.playback_reopens.load(Ordering::Relaxed),
            reference_resyncs: lock(&self.shared.reference).resyncs(),
        }
    }

    /// Waits until both devices are open, up to `timeout`.
    pub fn wait_open(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if matches!(s.capture, DeviceStatus::Open(_))
                && matches!(s.playback, DeviceStatus::Open(_))
            {
                return true;
            }
            if Instant::now() >= deadline || self.shared.sleep(Duration::from_millis(10)) {
                return false;
            }
        }
    }

    /// Stops both threads and closes the devices.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.stop_cond.notify_all();
        for q in [&self.shared.uplink, &self.shared.downlink] {
            if let Some(q) = lock(q).as_ref() {
                q.close();
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for AudioEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Playback gain of a volume percentage: square law (close to perceived loudness), 0 = mute.
pub fn volume_gain(percent: u8) -> f32 {
    let v = f32::from(percent.min(100)) / 100.0;
    v * v
}

struct CallSource {
    q: Arc<FrameQueue>,
    shared: Arc<Shared>,
}

impl PcmSource for CallSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<(), PcmError> {
        if out.len() != FRAME_SAMPLES {
            return Err(bad_len("call source", out.len()));
        }
        loop {
            match self.q.pop_wait(Duration::from_secs(1)) {
                Pop::Frame(f) => {
                    out.copy_from_slice(&f);
                    return Ok(());
                }
                Pop::Closed => return Err(PcmError::Ended),
                Pop::TimedOut if self.shared.stopping() => return Err(PcmError::Ended),
                Pop::TimedOut => {}
            }
        }
    }
}

impl Drop for CallSource {
    fn drop(&mut self) {
        let mut active = lock(&self.shared.uplink);
        if active.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.q)) {
            self.shared
                .n
                .uplink_dropped
                .fetch_add(self.q.dropped(), Ordering::Relaxed);
            *active = None;
        }
        self.q.close();
    }
}

struct CallSink {
    q: Arc<FrameQueue>,
    shared: Arc<Shared>,
}

impl PcmSink for CallSink {
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), PcmError> {
        if frame.len() != FRAME_SAMPLES {
            return Err(bad_len("call sink", frame.len()));
        }
        if self.q.push_wait(frame.into(), FRAME_DURATION * 2) {
            Ok(())
        } else {
            Err(PcmError::Ended)
        }
    }
}

impl Drop for CallSink {
    fn drop(&mut self) {
        let mut active = lock(&self.shared.downlink);
        if active.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.q)) {
            self.shared
                .n
                .downlink_dropped
                .fetch_add(self.q.dropped(), Ordering::Relaxed);
            *active = None;
        }
        self.q.close();
    }
}

fn bad_len(device: &str, len: usize) -> PcmError {
    PcmError::Device {
        device: device.into(),
        reason: format!("frame of {len} samples, expected {FRAME_SAMPLES} (20 ms at 48 kHz mono)"),
    }
}

/// Opens a device, retrying with back-off until it works or the engine stops.
fn open_with_retry<D>(
    shared: &Shared,
    status: &Mutex<DeviceStatus>,
    open: impl Fn() -> Result<D, DeviceError>,
    granted: impl Fn(&D) -> Granted,
    idle: &mut dyn FnMut(),
) -> Option<D> {
    let mut backoff = BACKOFF_MIN;
    let mut next_try = Instant::now();
    let mut logged = false;
    loop {
        if shared.stopping() {
            return None;
        }
        if Instant::now() >= next_try {
            match open() {
                Ok(d) => {
                    *lock(status) = DeviceStatus::Open(granted(&d));
                    return Some(d);
                }
                Err(e) => {
                    if !logged {
                        tracing::error!("{e}; retrying every {} s at most", BACKOFF_MAX.as_secs());
                        logged = true;
                    }
                    *lock(status) = DeviceStatus::Failed(e.to_string());
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        // Keep the call side flowing (silence / draining) while the device is away.
        idle();
    }
}

fn capture_thread(shared: &Shared, name: &str, mut voice: VoiceProcessor, pace: bool) {
    let mut pacer = FramePacer::new();
    let silence = vec![0i16; FRAME_SAMPLES];
    let mut mic = vec![0i16; FRAME_SAMPLES];
    let mut dev: Option<Capture> = None;
    let mut counted_xruns = 0;
    let deliver = |frame: &[i16]| {
        let q = lock(&shared.uplink).clone();
        if let Some(q) = q {
            q.push(frame.into());
        }
    };
    while !shared.stopping() {
        let d = match &mut dev {
            Some(d) => d,
            None => {
                let mut idle = || {
                    pacer.wait();
                    lock(&shared.reference).clear();
                    deliver(&silence);
                };
                let Some(d) = open_with_retry(
                    shared,
                    &shared.capture_status,
                    || Capture::open(name),
                    Capture::granted,
                    &mut idle,
                ) else {
                    break;
                };
                voice.reset_echo();
                lock(&shared.reference).clear();
                counted_xruns = 0;
                dev.insert(d)
            }
        };
        let r = d.read_frame(&mut mic);
        let x = d.xruns();
        shared
            .n
            .capture_xruns
            .fetch_add(x - counted_xruns, Ordering::Relaxed);
        counted_xruns = x;
        match r {
            Ok(Io::Frame) => {}
            Ok(Io::Empty) => {
                pacer.wait();
                continue;
            }
            Err(e) => {
                tracing::error!("{e}; reopening");
                *lock(&shared.capture_status) = DeviceStatus::Failed(e.to_string());
                shared.n.capture_reopens.fetch_add(1, Ordering::Relaxed);
                dev = None;
                continue;
            }
        }
        if pace {
            pacer.wait();
        }
        shared.n.captured.fetch_add(1, Ordering::Relaxed);
        let active = lock(&shared.uplink).clone();
        let far = {
            // Playback may be a moment late with the frame this one pairs with: wait a little.
            let deadline = Instant::now() + REFERENCE_WAIT;
            let mut r = lock(&shared.reference);
            while r.next_is_due() && Instant::now() < deadline {
                r = shared
                    .reference_pushed
                    .wait_timeout(r, deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            r.take()
        };
        let Some(q) = active else { continue };
        voice.process(&mut mic, far.as_deref().unwrap_or(&silence));
        q.push(mic.as_slice().into());
    }
}

fn playback_thread(shared: &Shared, name: &str, bank: SoundBank, volume: f32, pace: bool) {
    let mut pacer = FramePacer::new();
    let mut player = SoundPlayer::default();
    let mut out = vec![0i16; FRAME_SAMPLES];
    let mut dev: Option<Playback> = None;
    let mut counted_xruns = 0;
    // Builds the next frame to play: call audio + feedback sound, at the configured volume.
    let next_frame = |out: &mut [i16], player: &mut SoundPlayer| {
        match lock(&shared.sound_cmd).take() {
            Some(SoundCmd::Play(s)) => player.start(bank.get(s).clone()),
            Some(SoundCmd::Stop) => player.stop(),
            None => {}
        }
        out.fill(0);
        let q = lock(&shared.downlink).clone();
        if let Some(q) = q {
            match q.try_pop() {
                Some(f) => out.copy_from_slice(&f),
                None => {
                    shared.n.downlink_underruns.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        player.mix_into(out);
        if volume != 1.0 {
            super::dsp::apply_gain(out, volume);
        }
    };
    while !shared.stopping() {
        let d = match &mut dev {
            Some(d) => d,
            None => {
                let mut scratch = vec![0i16; FRAME_SAMPLES];
                let mut idle = || {
                    pacer.wait();
                    next_frame(&mut scratch, &mut player);
                };
                let Some(d) = open_with_retry(
                    shared,
                    &shared.playback_status,
                    || Playback::open(name),
                    Playback::granted,
                    &mut idle,
                ) else {
                    break;
                };
                counted_xruns = 0;
                dev.insert(d)
            }
        };
        next_frame(&mut out, &mut player);
        if pace {
            pacer.wait();
        }
        let r = d.write_frame(&out);
        let x = d.xruns();
        shared
            .n
            .playback_xruns
            .fetch_add(x - counted_xruns, Ordering::Relaxed);
        counted_xruns = x;
        if let Err(e) = r {
            tracing::error!("{e}; reopening");
            *lock(&shared.playback_status) = DeviceStatus::Failed(e.to_string());
            shared.n.playback_reopens.fetch_add(1, Ordering::Relaxed);
            // Nothing is played until the reopen: stop pairing the microphone with stale frames.
            lock(&shared.reference).clear();
            dev = None;
            continue;
        }
        shared.n.played.fetch_add(1, Ordering::Relaxed);
        lock(&shared.reference).push(out.as_slice().into());
        shared.reference_pushed.notify_all();
    }
}
