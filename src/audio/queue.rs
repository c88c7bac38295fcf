//! A bounded queue of 20 ms frames between two threads: never grows past its capacity, drops
//! the oldest frame on overflow and counts it, and lets a reader or writer wait with a
//! deadline. Closing wakes everyone.
//!
//! Owns only memory and a condition variable; no device, no clock of its own.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub type Frame = Box<[i16]>;

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<Frame>,
    closed: bool,
    dropped: u64,
}

/// Bounded frame queue (see module doc).
#[derive(Debug)]
pub struct FrameQueue {
    inner: Mutex<Inner>,
    cond: Condvar,
    capacity: usize,
}

/// Outcome of a wait on the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    Frame(Frame),
    TimedOut,
    Closed,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking holder cannot leave the queue inconsistent: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a frame; on overflow drops the oldest and counts it. Returns false if closed.
    pub fn push(&self, f: Frame) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if g.frames.len() >= self.capacity {
            g.frames.pop_front();
            g.dropped += 1;
        }
        g.frames.push_back(f);
        drop(g);
        self.cond.notify_all();
        true
    }

    /// Appends a frame, first waiting up to `wait` for room; drops the oldest if still full.
    pub fn push_wait(&self, f: Frame, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut g = self.lock();
        while !g.closed && g.frames.len() >= self.capacity {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(g);
        self.push(f)
    }

    /// Takes the oldest frame without waiting.
    pub fn try_pop(&self) -> Option<Frame> {
        let f = self.lock().frames.pop_front();
        if f.is_some() {
            self.cond.notify_all();
        }
        f
    }

    /// Takes the oldest frame, waiting up to `wait` for one.
    pub fn pop_wait(&self, wait: Duration) -> Pop {
        let deadline = Instant::now() + wait;
        let mut g = self.lock();
        loop {
            if let Some(f) = g.frames.pop_front() {
                drop(g);
                self.cond.notify_all();
                return Pop::Frame(f);
            }
            if g.closed {
                return Pop::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Pop::TimedOut;
            }
            g = self
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Drops frames from the front until at most `keep` remain; returns how many went.
    pub fn trim_to(&self, keep: usize) -> usize {
        let mut g = self.lock();
        let n = g.frames.len().saturating_sub(keep);
        g.frames.drain(..n);
        n
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames dropped on overflow so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Ends the queue: pending frames can still be popped, then `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: i16) -> Frame {
        vec![v; 4].into_boxed_slice()
    }

    #[test]
    fn overflow_drops_oldest_and_counts() {
        let q = FrameQueue::new(2);
        q.push(f(1));
        q.push(f(2));
        q.push(f(3));
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.try_pop().unwrap()[0], 2);
        assert_eq!(q.try_pop().unwrap()[0], 3);
        assert!(q.try_pop().is_none());
    }

    #[test]
    fn close_wakes_a_waiting_reader() {
        let q = std::sync::Arc::new(FrameQueue::new(2));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop_wait(Duration::from_secs(10)));
        q.close();
        assert_eq!(t.join().unwrap(), Pop::Closed);
    }

    #[test]
    fn push_wait_gives_up_and_drops_when_nobody_reads() {
        let q = FrameQueue::new(1);
        q.push(f(1));
        assert!(q.push_wait(f(2), Duration::from_millis(5)));
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.try_pop().unwrap()[0], 2);
    }
}
