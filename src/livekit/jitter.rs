//! Sans-IO jitter buffer for one remote Opus stream.
//!
//! Owns the ordering of received packets and the decision, once per 20 ms playout tick, of
//! what the decoder should do: play a packet, recover a lost one from the next packet's
//! in-band FEC, conceal it (Opus PLC), or output silence while the stream is paused. It has
//! no clock, no decoder and no I/O: packets go in with their RTP sequence number, decisions
//! come out when the playback side asks, so every behaviour is tested without sleeping.

use std::collections::BTreeMap;

/// What the decoder should produce for the current 20 ms tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet normally.
    Packet(Vec<u8>),
    /// The packet for this tick is lost but the next one arrived: decode its in-band FEC
    /// (`decode(next, fec = true)`). The next packet is still played normally next tick.
    Fec(Vec<u8>),
    /// The packet for this tick is lost: run packet loss concealment.
    Conceal,
    /// Nothing to play (not started yet, or the stream paused): output silence.
    Silence,
}

/// Tuning of a [`JitterBuffer`], in 20 ms frames.
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// Frames buffered before playout starts, and the initial target depth.
    pub initial_target: usize,
    /// Upper bound of the adaptive target depth.
    pub max_target: usize,
    /// Frames beyond the target after which the oldest ones are dropped to cut latency.
    pub overflow_margin: usize,
    /// Consecutive missing frames after which the stream counts as paused (silence, re-buffer).
    pub pause_after: u32,
    /// Consecutive good ticks after which the target shrinks by one frame.
    pub shrink_after: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            initial_target: 3,
            max_target: 10,
            overflow_margin: 6,
            pause_after: 10,
            shrink_after: 500,
        }
    }
}

/// Counters of one buffer, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub late: u64,
    pub duplicates: u64,
    pub dropped_overflow: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Buffering,
    Playing { next: u64 },
}

/// Reorders packets by sequence number and schedules their playout.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<u64, Vec<u8>>,
    state: State,
    target: usize,
    missing_run: u32,
    good_run: u32,
    /// Highest sequence number already played or skipped; later arrivals below it are late.
    played_up_to: Option<u64>,
    stats: JitterStats,
}

/// A packet further than this ahead of the playout point restarts the buffer (sender reset).
const MAX_JUMP: u64 = 1000;

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        Self {
            config,
            packets: BTreeMap::new(),
            state: State::Buffering,
            target: config.initial_target.max(1),
            missing_run: 0,
            good_run: 0,
            played_up_to: None,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Current target depth in frames.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Frames currently held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Adds a received packet (`seq` is the extended RTP sequence number).
    pub fn insert(&mut self, seq: u64, payload: Vec<u8>) {
        self.stats.received += 1;
        if let Some(played) = self.played_up_to {
            if seq <= played {
                if played - seq > MAX_JUMP {
                    self.restart();
                } else {
                    // Arrived after its slot: buffer a little deeper from now on.
                    self.stats.late += 1;
                    self.target = (self.target + 1).min(self.config.max_target);
                    return;
                }
            } else if seq - played > MAX_JUMP {
                self.restart();
            }
        }
        if self.packets.insert(seq, payload).is_some() {
            self.stats.duplicates += 1;
        }
    }

    fn restart(&mut self) {
        self.packets.clear();
        self.state = State::Buffering;
        self.played_up_to = None;
        self.missing_run = 0;
    }

    /// Decides the playout of the next 20 ms tick.
    pub fn pop(&mut self) -> Playout {
        let next = match self.state {
            State::Buffering => {
                if self.packets.len() < self.target {
                    return Playout::Silence;
                }
                let first = *self.packets.keys().next().expect("non-empty");
                self.state = State::Playing { next: first };
                first
            }
            State::Playing { next } => next,
        };
        let next = self.drop_overflow(next);
        self.state = State::Playing { next: next + 1 };
        self.played_up_to = Some(next);

        if let Some(packet) = self.packets.remove(&next) {
            self.missing_run = 0;
            self.good_run += 1;
            if self.good_run >= self.config.shrink_after && self.target > 1 {
                self.target -= 1;
                self.good_run = 0;
            }
            return Playout::Packet(packet);
        }

        self.good_run = 0;
        self.missing_run += 1;
        if self.packets.is_empty() {
            // Nothing newer has arrived: the packet is late or the sender went quiet.
            if self.missing_run == 1 && self.target < self.config.max_target {
                self.target += 1;
            }
            if self.missing_run > self.config.pause_after {
                self.state = State::Buffering;
                return Playout::Silence;
            }
            return Playout::Conceal;
        }
        match self.packets.get(&(next + 1)) {
            Some(following) => Playout::Fec(following.clone()),
            None => Playout::Conceal,
        }
    }

    /// Drops the oldest frames when far more than the target is buffered (sender clock
    /// faster than ours, or a burst after a stall). Returns the new playout point.
    fn drop_overflow(&mut self, mut next: u64) -> u64 {
        let limit = self.target + self.config.overflow_margin;
        if self.packets.len() <= limit {
            return next;
        }
        while self.packets.len() > self.target {
            let (&first, _) = self.packets.iter().next().expect("non-empty");
            self.packets.remove(&first);
            self.stats.dropped_overflow += 1;
            next = next.max(first + 1);
        }
        next.max(*self.packets.keys().next().expect("target >= 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u64) -> Vec<u8> {
        vec![seq as u8]
    }

    fn buffer() -> JitterBuffer {
        JitterBuffer::new(JitterConfig::default())
    }

    #[test]
    fn waits_for_target_depth_then_plays_in_order() {
        let mut jb = buffer();
        jb.insert(10, p(10));
        jb.insert(11, p(11));
        assert_eq!(jb.pop(), Playout::Silence);
        jb.insert(12, p(12));
        assert_eq!(jb.pop(), Playout::Packet(p(10)));
        assert_eq!(jb.pop(), Playout::Packet(p(11)));
        assert_eq!(jb.pop(), Playout::Packet(p(12)));
    }

    #[test]
    fn reorders_packets() {
        let mut jb = buffer();
        for seq in [102, 100, 101, 104, 103] {
            jb.insert(seq, p(seq));
        }
        for seq in 100..=104 {
            assert_eq!(jb.pop(), Playout::Packet(p(seq)));
        }
    }

    #[test]
    fn lost_packet_is_recovered_from_next_packets_fec() {
        let mut jb = buffer();
        for seq in [0, 1, 3, 4] {
            jb.insert(seq, p(seq));
        }
        assert_eq!(jb.pop(), Playout::Packet(p(0)));
        assert_eq!(jb.pop(), Playout::Packet(p(1)));
        assert_eq!(jb.pop(), Playout::Fec(p(3)));
        assert_eq!(jb.pop(), Playout::Packet(p(3)));
        assert_eq!(jb.pop(), Playout::Packet(p(4)));
    }

    #[test]
    fn burst_loss_is_concealed_then_fec_for_the_last_gap() {
        let mut jb = buffer();
        for seq in [0, 1, 2, 6] {
            jb.insert(seq, p(seq));
        }
        for seq in 0..3 {
            assert_eq!(jb.pop(), Playout::Packet(p(seq)));
        }
        assert_eq!(jb.pop(), Playout::Conceal); // 3
        assert_eq!(jb.pop(), Playout::Conceal); // 4
        assert_eq!(jb.pop(), Playout::Fec(p(6))); // 5
        assert_eq!(jb.pop(), Playout::Packet(p(6)));
    }

    #[test]
    fn late_packet_after_its_slot_is_dropped_and_counted() {
        let mut jb = buffer();
        for seq in [0, 1, 2, 4] {
            jb.insert(seq, p(seq));
        }
        for seq in 0..3 {
            assert_eq!(jb.pop(), Playout::Packet(p(seq)));
        }
        assert_eq!(jb.pop(), Playout::Fec(p(4)));
        let target = jb.target();
        jb.insert(3, p(3));
        assert_eq!(jb.pop(), Playout::Packet(p(4)));
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.target(), target + 1, "lateness deepens the buffer");
    }

    #[test]
    fn jitter_underrun_conceals_and_grows_the_target() {
        let mut jb = buffer();
        for seq in 0..3 {
            jb.insert(seq, p(seq));
        }
        for seq in 0..3 {
            assert_eq!(jb.pop(), Playout::Packet(p(seq)));
        }
        let before = jb.target();
        // Packet 3 is delayed past its slot: concealed; it then arrives late.
        assert_eq!(jb.pop(), Playout::Conceal);
        assert_eq!(jb.target(), before + 1);
        jb.insert(3, p(3));
        jb.insert(4, p(4));
        assert_eq!(jb.pop(), Playout::Packet(p(4)));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn silence_after_the_sender_pauses_then_rebuffers() {
        let config = JitterConfig::default();
        let mut jb = JitterBuffer::new(config);
        for seq in 0..3 {
            jb.insert(seq, p(seq));
        }
        for _ in 0..3 {
            assert!(matches!(jb.pop(), Playout::Packet(_)));
        }
        for _ in 0..config.pause_after {
            assert_eq!(jb.pop(), Playout::Conceal);
        }
        assert_eq!(jb.pop(), Playout::Silence);
        assert_eq!(jb.pop(), Playout::Silence);
        // The stream resumes later: buffered up to the (grown) target, then played.
        let resume = 3 + u64::from(config.pause_after) + 50;
        let target = jb.target() as u64;
        for seq in resume..resume + target {
            jb.insert(seq, p(seq));
        }
        assert_eq!(jb.pop(), Playout::Packet(p(resume)));
    }

    #[test]
    fn overflow_drops_oldest_frames_to_cut_latency() {
        let mut jb = buffer();
        for seq in 0..30 {
            jb.insert(seq, p(seq));
        }
        let target = jb.target() as u64;
        // Far above target + margin: playout jumps so only `target` frames remain buffered.
        assert_eq!(jb.pop(), Playout::Packet(p(30 - target)));
        assert_eq!(jb.stats().dropped_overflow, 30 - target);
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut jb = buffer();
        for seq in [0, 0, 1, 2, 1] {
            jb.insert(seq, p(seq));
        }
        assert_eq!(jb.stats().duplicates, 2);
        for seq in 0..3 {
            assert_eq!(jb.pop(), Playout::Packet(p(seq)));
        }
        assert_eq!(jb.pop(), Playout::Conceal);
    }

    #[test]
    fn sequence_jump_restarts_the_buffer() {
        let mut jb = buffer();
        for seq in 0..3 {
            jb.insert(seq, p(seq));
            jb.pop();
        }
        for seq in 50_000..50_003 {
            jb.insert(seq, p(seq));
        }
        // Already playing: after the restart the buffer fills to target first.
        assert_eq!(jb.pop(), Playout::Packet(p(50_000)));
    }
}
