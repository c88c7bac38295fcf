//! LED blink patterns as pure functions of the time since the pattern started; no I/O.

use crate::machine::LedPattern;
use std::time::Duration;

/// A blinking pattern as alternating on/off durations in milliseconds, starting with on.
fn cycle(pattern: LedPattern) -> Option<&'static [u64]> {
    match pattern {
        LedPattern::Heartbeat => Some(&[80, 120, 80, 1720]),
        LedPattern::Attention => Some(&[80, 120, 80, 120, 80, 1520]),
        LedPattern::Blink => Some(&[250, 250]),
        LedPattern::Pulse => Some(&[900, 300]),
        LedPattern::FastBlink => Some(&[80, 80]),
        LedPattern::Solid | LedPattern::Off => None,
    }
}

/// Where `elapsed` falls in the pattern: (level, time left until the level changes).
pub(super) fn position(pattern: LedPattern, elapsed: Duration) -> (bool, Option<Duration>) {
    let Some(segments) = cycle(pattern) else {
        return (pattern == LedPattern::Solid, None);
    };
    let period: u128 = segments.iter().map(|ms| u128::from(*ms) * 1_000_000).sum();
    let mut pos = elapsed.as_nanos() % period;
    let mut on = true;
    for ms in segments {
        let len = u128::from(*ms) * 1_000_000;
        if pos < len {
            let left = u64::try_from(len - pos).unwrap_or(u64::MAX);
            return (on, Some(Duration::from_nanos(left)));
        }
        pos -= len;
        on = !on;
    }
    unreachable!("pos < period")
}

/// Whether the LED is lit `elapsed` after the pattern started.
pub fn pattern_level(pattern: LedPattern, elapsed: Duration) -> bool {
    position(pattern, elapsed).0
}

/// How long after `elapsed` the LED's level next changes; `None` for steady patterns.
pub fn next_change(pattern: LedPattern, elapsed: Duration) -> Option<Duration> {
    position(pattern, elapsed).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn led_patterns() {
        use LedPattern::*;
        assert!(pattern_level(Solid, Duration::from_secs(1234)));
        assert!(!pattern_level(Off, Duration::from_secs(1234)));
        assert_eq!(next_change(Solid, ms(5)), None);
        assert_eq!(next_change(Off, ms(5)), None);

        // Heartbeat: two short blips every 2 s.
        let lit: Vec<bool> = [0, 79, 80, 199, 200, 279, 280, 1999, 2000, 2079]
            .iter()
            .map(|t| pattern_level(Heartbeat, ms(*t)))
            .collect();
        assert_eq!(
            lit,
            [true, true, false, false, true, true, false, false, true, true]
        );
        assert_eq!(next_change(Heartbeat, ms(0)), Some(ms(80)));
        assert_eq!(next_change(Heartbeat, ms(300)), Some(ms(1700)));

        // Attention: three blips every 2 s, told apart from the heartbeat's two.
        let blips = |p| {
            (0..2000)
                .filter(|t| pattern_level(p, ms(*t)) && !pattern_level(p, ms(t + 1)))
                .count()
        };
        assert_eq!((blips(Heartbeat), blips(Attention)), (2, 3));

        // Blink is even, FastBlink faster, Pulse mostly on.
        assert!(pattern_level(Blink, ms(100)) && !pattern_level(Blink, ms(300)));
        assert_eq!(next_change(Blink, ms(100)), Some(ms(150)));
        assert!(pattern_level(FastBlink, ms(20)) && !pattern_level(FastBlink, ms(100)));
        assert!(pattern_level(Pulse, ms(800)) && !pattern_level(Pulse, ms(1000)));
        assert!(pattern_level(Pulse, ms(1200)));

        // Following next_change always lands on a change of level.
        for p in [Heartbeat, Attention, Blink, Pulse, FastBlink] {
            let mut t = ms(7);
            for _ in 0..20 {
                let before = pattern_level(p, t);
                t += next_change(p, t).expect("blinking pattern");
                assert_ne!(pattern_level(p, t), before, "{p:?} at {t:?}");
            }
        }
    }
}
