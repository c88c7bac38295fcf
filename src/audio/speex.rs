//! Safe wrappers over libspeexdsp (Debian `libspeexdsp-dev`): the MDF echo canceller, the
//! preprocessor (noise suppression, AGC, residual echo suppression) and the resampler.
//!
//! Owns the FFI declarations and the C objects' lifetimes; knows nothing about ALSA, threads or
//! config files. Every object is used by one thread at a time (`Send`, not `Sync`).

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

#[repr(C)]
struct SpeexEchoState {
    _private: [u8; 0],
}
#[repr(C)]
struct SpeexPreprocessState {
    _private: [u8; 0],
}
#[repr(C)]
struct SpeexResamplerState {
    _private: [u8; 0],
}

#[link(name = "speexdsp")]
extern "C" {
    fn speex_echo_state_init(frame_size: c_int, filter_length: c_int) -> *mut SpeexEchoState;
    fn speex_echo_state_destroy(st: *mut SpeexEchoState);
    fn speex_echo_cancellation(
        st: *mut SpeexEchoState,
        rec: *const i16,
        play: *const i16,
        out: *mut i16,
    );
    fn speex_echo_state_reset(st: *mut SpeexEchoState);
    fn speex_echo_ctl(st: *mut SpeexEchoState, request: c_int, ptr: *mut c_void) -> c_int;

    fn speex_preprocess_state_init(
        frame_size: c_int,
        sampling_rate: c_int,
    ) -> *mut SpeexPreprocessState;
    fn speex_preprocess_state_destroy(st: *mut SpeexPreprocessState);
    fn speex_preprocess_run(st: *mut SpeexPreprocessState, x: *mut i16) -> c_int;
    fn speex_preprocess_ctl(
        st: *mut SpeexPreprocessState,
        request: c_int,
        ptr: *mut c_void,
    ) -> c_int;

    fn speex_resampler_init(
        nb_channels: u32,
        in_rate: u32,
        out_rate: u32,
        quality: c_int,
        err: *mut c_int,
    ) -> *mut SpeexResamplerState;
    fn speex_resampler_destroy(st: *mut SpeexResamplerState);
    fn speex_resampler_process_int(
        st: *mut SpeexResamplerState,
        channel_index: u32,
        input: *const i16,
        in_len: *mut u32,
        out: *mut i16,
        out_len: *mut u32,
    ) -> c_int;
}

const SPEEX_ECHO_SET_SAMPLING_RATE: c_int = 24;
const PRE_SET_DENOISE: c_int = 0;
const PRE_SET_AGC: c_int = 2;
const PRE_SET_AGC_LEVEL: c_int = 6;
const PRE_SET_NOISE_SUPPRESS: c_int = 18;
const PRE_SET_ECHO_SUPPRESS: c_int = 20;
const PRE_SET_ECHO_SUPPRESS_ACTIVE: c_int = 22;
const PRE_SET_ECHO_STATE: c_int = 24;
const PRE_SET_AGC_MAX_GAIN: c_int = 30;

/// speexdsp returned a null object (out of memory or invalid sizes).
#[derive(Debug, thiserror::Error)]
#[error("libspeexdsp could not create its {0} state (invalid size or out of memory)")]
pub struct SpeexError(&'static str);

/// The MDF adaptive echo canceller. `frame` samples per call, `tail` samples of echo path.
pub struct EchoCanceller {
    st: NonNull<SpeexEchoState>,
    frame: usize,
}

// SAFETY: the state is plain heap memory owned by this value, used from one thread at a time.
unsafe impl Send for EchoCanceller {}

impl EchoCanceller {
    pub fn new(frame: usize, tail: usize, rate: u32) -> Result<Self, SpeexError> {
        // SAFETY: plain constructor; a null return is handled.
        let st = unsafe { speex_echo_state_init(frame as c_int, tail as c_int) };
        let st = NonNull::new(st).ok_or(SpeexError("echo canceller"))?;
        let mut r = rate as c_int;
        // SAFETY: valid state, request takes a pointer to int.
        unsafe {
            speex_echo_ctl(
                st.as_ptr(),
                SPEEX_ECHO_SET_SAMPLING_RATE,
                (&mut r as *mut c_int).cast(),
            )
        };
        Ok(Self { st, frame })
    }

    /// Removes the echo of `far` (what was played) from `mic` into `out`.
    pub fn cancel(&mut self, mic: &[i16], far: &[i16], out: &mut [i16]) {
        assert!(mic.len() == self.frame && far.len() == self.frame && out.len() == self.frame);
        // SAFETY: all three buffers hold exactly `frame` samples, as the state was created for.
        unsafe {
            speex_echo_cancellation(
                self.st.as_ptr(),
                mic.as_ptr(),
                far.as_ptr(),
                out.as_mut_ptr(),
            )
        }
    }

    /// Forgets the learned echo path.
    pub fn reset(&mut self) {
        // SAFETY: valid state.
        unsafe { speex_echo_state_reset(self.st.as_ptr()) }
    }
}

impl Drop for EchoCanceller {
    fn drop(&mut self) {
        // SAFETY: created by speex_echo_state_init, destroyed once. A preprocessor that
        // references it is dropped first (see `VoiceProcessor` field order).
        unsafe { speex_echo_state_destroy(self.st.as_ptr()) }
    }
}

/// Settings of the preprocessor.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessSettings {
    pub denoise: bool,
    /// Noise attenuation in dB (negative).
    pub noise_suppress_db: i32,
    pub agc: bool,
    /// AGC target level (16-bit sample scale RMS).
    pub agc_level: f32,
    /// Largest AGC gain in dB.
    pub agc_max_gain_db: i32,
}

/// The preprocessor: noise suppression, AGC and (with an echo canceller attached) residual
/// echo suppression.
pub struct Preprocessor {
    st: NonNull<SpeexPreprocessState>,
    frame: usize,
}

// SAFETY: as for `EchoCanceller`.
unsafe impl Send for Preprocessor {}

impl Preprocessor {
    pub fn new(frame: usize, rate: u32, s: PreprocessSettings) -> Result<Self, SpeexError> {
        // SAFETY: plain constructor; a null return is handled.
        let st = unsafe { speex_preprocess_state_init(frame as c_int, rate as c_int) };
        let st = NonNull::new(st).ok_or(SpeexError("preprocessor"))?;
        let mut p = Self { st, frame };
        p.ctl_int(PRE_SET_DENOISE, s.denoise as c_int);
        p.ctl_int(PRE_SET_NOISE_SUPPRESS, s.noise_suppress_db);
        p.ctl_int(PRE_SET_AGC, s.agc as c_int);
        p.ctl_int(PRE_SET_AGC_MAX_GAIN, s.agc_max_gain_db);
        let mut level = s.agc_level;
        // SAFETY: AGC_LEVEL takes a pointer to float.
        unsafe {
            speex_preprocess_ctl(
                p.st.as_ptr(),
                PRE_SET_AGC_LEVEL,
                (&mut level as *mut f32).cast(),
            )
        };
        Ok(p)
    }

    fn ctl_int(&mut self, req: c_int, v: c_int) {
        let mut v = v;
        // SAFETY: these requests take a pointer to int.
        unsafe { speex_preprocess_ctl(self.st.as_ptr(), req, (&mut v as *mut c_int).cast()) };
    }

    /// Lets the preprocessor suppress the echo the canceller left over. The canceller must
    /// outlive this preprocessor (or be detached with `None` first).
    pub fn attach_echo(&mut self, echo: Option<&EchoCanceller>) {
        let ptr: *mut c_void = echo.map_or(std::ptr::null_mut(), |e| e.st.as_ptr().cast());
        // SAFETY: ECHO_STATE takes the echo state pointer itself (or null to detach).
        unsafe { speex_preprocess_ctl(self.st.as_ptr(), PRE_SET_ECHO_STATE, ptr) };
        self.ctl_int(PRE_SET_ECHO_SUPPRESS, -40);
        self.ctl_int(PRE_SET_ECHO_SUPPRESS_ACTIVE, -15);
    }

    /// Processes one frame in place.
    pub fn run(&mut self, x: &mut [i16]) {
        assert_eq!(x.len(), self.frame);
        // SAFETY: the buffer holds exactly `frame` samples.
        unsafe { speex_preprocess_run(self.st.as_ptr(), x.as_mut_ptr()) };
    }
}

impl Drop for Preprocessor {
    fn drop(&mut self) {
        // SAFETY: created by speex_preprocess_state_init, destroyed once.
        unsafe { speex_preprocess_state_destroy(self.st.as_ptr()) }
    }
}

/// A mono sample-rate converter (speexdsp's windowed-sinc resampler).
pub struct Resampler {
    st: NonNull<SpeexResamplerState>,
}

// SAFETY: as for `EchoCanceller`.
unsafe impl Send for Resampler {}

impl Resampler {
    /// Quality 0..=10; 5 is speexdsp's "VoIP" default.
    pub fn new(in_rate: u32, out_rate: u32, quality: i32) -> Result<Self, SpeexError> {
        let mut err: c_int = 0;
        // SAFETY: plain constructor; a null return is handled.
        let st = unsafe { speex_resampler_init(1, in_rate, out_rate, quality, &mut err) };
        let st = NonNull::new(st).ok_or(SpeexError("resampler"))?;
        Ok(Self { st })
    }

    /// Converts all of `input`, appending the output to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let mut rest = input;
        let mut buf = [0i16; 1024];
        loop {
            let mut in_len = rest.len() as u32;
            let mut out_len = buf.len() as u32;
            // SAFETY: lengths describe the buffers; speexdsp updates them to what it used.
            unsafe {
                speex_resampler_process_int(
                    self.st.as_ptr(),
                    0,
                    rest.as_ptr(),
                    &mut in_len,
                    buf.as_mut_ptr(),
                    &mut out_len,
                )
            };
            out.extend_from_slice(&buf[..out_len as usize]);
            rest = &rest[in_len as usize..];
            if rest.is_empty() || (in_len == 0 && out_len == 0) {
                break;
            }
        }
    }
}

impl Drop for Resampler {
    fn drop(&mut self) {
        // SAFETY: created by speex_resampler_init, destroyed once.
        unsafe { speex_resampler_destroy(self.st.as_ptr()) }
    }
}
