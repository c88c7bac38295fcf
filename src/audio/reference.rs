//! The echo canceller's far-end reference: frames the playback thread handed to the device,
//! paired with microphone frames at a constant offset.
//!
//! Frames are numbered as they are played; microphone frame `c` gets played frame
//! `c + offset`. The offset is fixed when the pairing starts: one frame before the newest
//! played frame. The newest frame written before a microphone frame is read still has to go
//! through the playback buffer and the room, so it leads that microphone frame's echo; the
//! one-frame margin absorbs scheduling jitter between the two threads (it costs 20 ms of the
//! lead, which the playback buffer of ≥ 30 ms covers). When the pairing drifts out of range
//! (start-up, a device reopen, two cards with different clocks) it is set again and counted.
//! Owns only memory; no device, no clock.

use std::collections::VecDeque;

/// Played frames kept (320 ms).
const KEEP: usize = 16;
/// Largest lead of the reference over the microphone, in frames, before resyncing (the echo
/// canceller models 200 ms of echo).
const MAX_LEAD: u64 = 5;
/// Consecutive microphone frames whose reference was not played yet before resyncing.
const MAX_MISSES: u32 = 5;

#[derive(Debug, Default)]
pub struct Reference {
    frames: VecDeque<Box<[i16]>>,
    /// Number of frames pushed so far (the next frame's number).
    pushed: u64,
    /// Microphone frames taken so far.
    taken: u64,
    offset: Option<i64>,
    misses: u32,
    resyncs: u64,
}

impl Reference {
    /// Playback side: one frame was written to the device.
    pub fn push(&mut self, f: Box<[i16]>) {
        self.frames.push_back(f);
        self.pushed += 1;
        if self.frames.len() > KEEP {
            self.frames.pop_front();
        }
    }

    /// Capture side: the reference for the next microphone frame (None = silence).
    pub fn take(&mut self) -> Option<Box<[i16]>> {
        let mic = self.taken as i64;
        self.taken += 1;
        if self.frames.is_empty() {
            return None;
        }
        let newest = self.pushed as i64 - 1;
        let oldest = self.pushed as i64 - self.frames.len() as i64;
        let offset = *self.offset.get_or_insert(newest - 1 - mic);
        let mut want = mic + offset;
        if want > newest {
            self.misses += 1;
            if self.misses <= MAX_MISSES {
                return None;
            }
        }
        if want > newest || want < oldest || newest - want > MAX_LEAD as i64 {
            want = (newest - 1).max(oldest);
            self.offset = Some(want - mic);
            self.resyncs += 1;
        }
        self.misses = 0;
        self.frames.get((want - oldest) as usize).cloned()
    }

    /// True when the next microphone frame's reference is the very next frame to be played:
    /// the capture side may wait briefly for it instead of using silence.
    pub fn next_is_due(&self) -> bool {
        match self.offset {
            Some(off) => !self.frames.is_empty() && self.taken as i64 + off == self.pushed as i64,
            None => false,
        }
    }

    /// Forgets the pairing (the capture device was reopened or is away).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.offset = None;
        self.misses = 0;
    }

    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: i16) -> Box<[i16]> {
        vec![v; 2].into_boxed_slice()
    }

    #[test]
    fn pairing_keeps_its_offset_when_a_reference_frame_comes_late() {
        let mut r = Reference::default();
        r.push(f(0));
        r.push(f(1));
        assert_eq!(r.take().unwrap()[0], 0); // mic 0 ↔ played 0 (one before the newest)
        assert_eq!(r.take().unwrap()[0], 1);
        assert!(r.next_is_due());
        assert!(r.take().is_none()); // mic 2: played 2 not there yet → silence
        r.push(f(2));
        r.push(f(3));
        assert_eq!(r.take().unwrap()[0], 3); // mic 3 ↔ played 3: same offset
        assert_eq!(r.resyncs(), 0);
    }

    #[test]
    fn a_reference_far_ahead_is_realigned_and_counted() {
        let mut r = Reference::default();
        r.push(f(0));
        r.push(f(1));
        assert_eq!(r.take().unwrap()[0], 0);
        for i in 2..12 {
            r.push(f(i));
        }
        // Played ran 10 frames ahead: realign to one before the newest.
        assert_eq!(r.take().unwrap()[0], 10);
        assert_eq!(r.resyncs(), 1);
    }

    #[test]
    fn a_reference_that_stops_coming_is_realigned() {
        let mut r = Reference::default();
        r.push(f(0));
        r.push(f(1));
        r.take();
        r.take();
        for _ in 0..MAX_MISSES {
            assert!(r.take().is_none());
        }
        r.push(f(2));
        assert_eq!(r.take().unwrap()[0], 1);
        assert_eq!(r.resyncs(), 1);
    }
}
