//! The button's software guard: pure, fed with `(time, level)`; no I/O.

use std::time::{Duration, Instant};

/// What the button guard makes of an edge or the passing of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonSignal {
    /// A press to pass on.
    Press,
    /// The button has been held for `STUCK_AFTER`: reported once per hold.
    Stuck { held: Duration },
    /// The stuck button was released.
    Released,
}

/// Software guard behind the kernel's debounce: ignores a press within `min_gap` of the last
/// accepted one, and reports a button held for `stuck_after` once instead of as presses.
#[derive(Debug, Clone)]
pub struct ButtonGuard {
    min_gap: Duration,
    stuck_after: Duration,
    pressed_since: Option<Instant>,
    last_press: Option<Instant>,
    stuck_reported: bool,
}

impl ButtonGuard {
    /// `pressed_now` is the line's level at start: a button already held is no press.
    pub fn new(now: Instant, pressed_now: bool, min_gap: Duration, stuck_after: Duration) -> Self {
        Self {
            min_gap,
            stuck_after,
            pressed_since: pressed_now.then_some(now),
            last_press: None,
            stuck_reported: false,
        }
    }

    /// The line became active (`pressed`) or inactive at `now`.
    pub fn edge(&mut self, now: Instant, pressed: bool) -> Option<ButtonSignal> {
        if !pressed {
            self.pressed_since = None;
            return std::mem::take(&mut self.stuck_reported).then_some(ButtonSignal::Released);
        }
        if self.pressed_since.is_some() {
            return None; // still held: a release edge was lost, or the line chatters
        }
        self.pressed_since = Some(now);
        if self
            .last_press
            .is_some_and(|last| now.saturating_duration_since(last) < self.min_gap)
        {
            return None;
        }
        self.last_press = Some(now);
        Some(ButtonSignal::Press)
    }

    /// Time passes: reports a stuck button once `next_check()` is reached.
    pub fn tick(&mut self, now: Instant) -> Option<ButtonSignal> {
        let since = self.pressed_since?;
        let held = now.saturating_duration_since(since);
        if self.stuck_reported || held < self.stuck_after {
            return None;
        }
        self.stuck_reported = true;
        Some(ButtonSignal::Stuck { held })
    }

    /// When to call [`tick`](Self::tick) next, if ever.
    pub fn next_check(&self) -> Option<Instant> {
        match (self.pressed_since, self.stuck_reported) {
            (Some(since), false) => Some(since + self.stuck_after),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::{PRESS_GUARD, STUCK_AFTER};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn guard(t0: Instant, held: bool) -> ButtonGuard {
        ButtonGuard::new(t0, held, PRESS_GUARD, STUCK_AFTER)
    }

    #[test]
    fn a_press_is_passed_on_and_bounces_are_not() {
        let t0 = Instant::now();
        let mut g = guard(t0, false);
        assert_eq!(g.edge(t0, true), Some(ButtonSignal::Press));
        // Contact bounce that got past the kernel's debounce.
        assert_eq!(g.edge(t0 + ms(5), false), None);
        assert_eq!(g.edge(t0 + ms(10), true), None);
        assert_eq!(g.edge(t0 + ms(120), false), None);
        // A quick double press within the guard is one press.
        assert_eq!(g.edge(t0 + ms(250), true), None);
        assert_eq!(g.edge(t0 + ms(290), false), None);
        // A deliberate second press later counts.
        assert_eq!(g.edge(t0 + ms(800), true), Some(ButtonSignal::Press));
    }

    #[test]
    fn a_held_button_is_reported_stuck_once_and_never_as_presses() {
        let t0 = Instant::now();
        let mut g = guard(t0, false);
        assert_eq!(g.edge(t0, true), Some(ButtonSignal::Press));
        assert_eq!(g.next_check(), Some(t0 + STUCK_AFTER));
        assert_eq!(g.tick(t0 + ms(9_999)), None);
        assert_eq!(
            g.tick(t0 + STUCK_AFTER),
            Some(ButtonSignal::Stuck { held: STUCK_AFTER })
        );
        assert_eq!(g.next_check(), None);
        for s in 11..60 {
            assert_eq!(g.tick(t0 + Duration::from_secs(s)), None);
            // A chattering stuck line produces no presses either.
            assert_eq!(g.edge(t0 + Duration::from_secs(s), true), None);
        }
        assert_eq!(
            g.edge(t0 + Duration::from_secs(61), false),
            Some(ButtonSignal::Released)
        );
        assert_eq!(
            g.edge(t0 + Duration::from_secs(62), true),
            Some(ButtonSignal::Press)
        );
    }

    #[test]
    fn a_button_held_at_start_is_no_press_but_can_be_stuck() {
        let t0 = Instant::now();
        let mut g = guard(t0, true);
        assert_eq!(g.edge(t0 + ms(50), true), None);
        assert!(matches!(
            g.tick(t0 + STUCK_AFTER),
            Some(ButtonSignal::Stuck { .. })
        ));
        assert_eq!(g.edge(t0 + ms(10_500), false), Some(ButtonSignal::Released));
        assert_eq!(g.edge(t0 + ms(11_000), true), Some(ButtonSignal::Press));
    }
}
