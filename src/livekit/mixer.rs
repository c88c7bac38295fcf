//! Mixes the decoded audio of all remote participants into one playback frame.
//!
//! Owns only sample arithmetic: summing, and a limiter that keeps the sum inside i16 without
//! wrap-around (the gain drops at once on overload and recovers slowly). No I/O, no clock.

/// Per-frame gain recovery towards 1.0 (fraction of the remaining distance per 20 ms frame:
/// about 0.5 s to recover most of the way).
const RELEASE: f32 = 0.08;

/// Sums frames with clipping protection.
#[derive(Debug)]
pub struct Mixer {
    gain: f32,
    sum: Vec<i32>,
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixer {
    pub fn new() -> Self {
        Self {
            gain: 1.0,
            sum: Vec::new(),
        }
    }

    /// Current limiter gain (1.0 = no reduction).
    pub fn gain(&self) -> f32 {
        self.gain
    }

    /// Mixes `inputs` (each as long as `out`) into `out`. No inputs give silence.
    pub fn mix<'a>(&mut self, inputs: impl IntoIterator<Item = &'a [i16]>, out: &mut [i16]) {
        self.sum.clear();
        self.sum.resize(out.len(), 0);
        for input in inputs {
            for (acc, &s) in self.sum.iter_mut().zip(input) {
                *acc += i32::from(s);
            }
        }
        let peak = self.sum.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) as f32;
        // Recover towards unity, then cut at once if this frame would still overload.
        self.gain += (1.0 - self.gain) * RELEASE;
        if peak * self.gain > f32::from(i16::MAX) {
            self.gain = f32::from(i16::MAX) / peak;
        }
        if self.gain > 0.999 && peak <= f32::from(i16::MAX) {
            self.gain = self.gain.min(1.0);
            for (o, &s) in out.iter_mut().zip(&self.sum) {
                *o = s as i16; // fits: peak <= i16::MAX
            }
            return;
        }
        for (o, &s) in out.iter_mut().zip(&self.sum) {
            let scaled = (s as f32 * self.gain).round();
            *o = scaled.clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_inputs_give_silence() {
        let mut m = Mixer::new();
        let mut out = [7i16; 960];
        m.mix(std::iter::empty(), &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn single_input_passes_unchanged() {
        let mut m = Mixer::new();
        let input: Vec<i16> = (0..960)
            .map(|i| ((i * 37) % 20000) as i16 - 10000)
            .collect();
        let mut out = [0i16; 960];
        m.mix([input.as_slice()], &mut out);
        assert_eq!(&out[..], &input[..]);
    }

    #[test]
    fn quiet_inputs_are_summed_exactly() {
        let mut m = Mixer::new();
        let a = [1000i16; 960];
        let b = [-300i16; 960];
        let mut out = [0i16; 960];
        m.mix([&a[..], &b[..]], &mut out);
        assert!(out.iter().all(|&s| s == 700));
    }

    #[test]
    fn loud_sum_is_limited_without_wrapping_and_keeps_its_sign() {
        let mut m = Mixer::new();
        let a = [30000i16; 960];
        let b = [30000i16; 960];
        let c = [-30000i16; 960];
        let mut out = [0i16; 960];
        m.mix([&a[..], &b[..]], &mut out);
        assert!(out.iter().all(|&s| s > 30000), "{}", out[0]);
        m.mix([&c[..], &c[..], &c[..]], &mut out);
        assert!(out.iter().all(|&s| s < -30000), "{}", out[0]);
        assert!(m.gain() < 0.5);
    }

    #[test]
    fn gain_recovers_after_the_overload_ends() {
        let mut m = Mixer::new();
        let loud = [30000i16; 960];
        let quiet = [1000i16; 960];
        let mut out = [0i16; 960];
        m.mix([&loud[..], &loud[..]], &mut out);
        assert!(m.gain() < 0.6);
        for _ in 0..100 {
            m.mix([&quiet[..]], &mut out);
        }
        assert!(m.gain() > 0.999);
        assert!(out.iter().all(|&s| s == 1000), "{}", out[0]);
    }
}
