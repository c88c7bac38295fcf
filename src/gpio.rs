//! Button, LED and relay on GPIO lines through the Linux GPIO character device (gpiocdev).
//!
//! Owns finding chips and lines (by path, name or label; by offset or line name), requesting
//! them, turning button edges into presses, blinking the LED and pulsing the door relay. It
//! must not decide anything about calls: presses go out on a channel, LED patterns and relay
//! pulses come in on channels, and the call machine decides in between.
//!
//! The hardware-free parts are pure and unit-tested: [`ButtonGuard`] (double-press and stuck
//! line guard fed with `(time, level)`) and [`pattern_level`]/[`next_change`] (LED patterns).
//!
//! Daemon use:
//! - `Button::open(&cfg.button)?` at start (fails early with a typed error), then
//!   `tokio::spawn(button.run(press_tx))`; every accepted press is one `()` on the channel.
//! - `Led::open(&led_cfg)?` then `tokio::spawn(led.run(pattern_rx))` with a
//!   `tokio::sync::watch` channel; `Action::SetLed(p)` becomes `pattern_tx.send_replace(p)`.
//! - `Relay::open(&relay_cfg)?` then `tokio::spawn(relay.run(pulse_rx))`;
//!   `Action::PulseRelay` becomes `pulse_tx.try_send(())`. The relay closes for `hold_ms`; a
//!   pulse while it is closed extends the hold.

use crate::config::{Bias, ButtonConfig, LineRef, OutputLineConfig, RelayConfig};
use crate::machine::LedPattern;
use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Builder;
use gpiocdev::Request;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod guard;
mod pattern;
pub use guard::{ButtonGuard, ButtonSignal};
use pattern::position;
pub use pattern::{next_change, pattern_level};

/// The consumer name the kernel shows for our lines (`gpioinfo`).
pub const CONSUMER: &str = "matrix-intercom";
/// A second press within this time of the last accepted one is ignored.
pub const PRESS_GUARD: Duration = Duration::from_millis(300);
/// A button held longer than this is reported (once) as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const ENODEV: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error(
        "GPIO chip \"{chip}\" not found ({detail}); set `chip` to a path (/dev/gpiochip0), \
         a name (gpiochip0) or a label (pinctrl-bcm2711): `gpiodetect` lists them"
    )]
    ChipNotFound { chip: String, detail: String },
    #[error(
        "no permission to use GPIO chip \"{chip}\"; run the service in group `gpio` \
         (SupplementaryGroups=gpio) with a udev rule giving that group /dev/gpiochip*"
    )]
    PermissionDenied { chip: String },
    #[error(
        "no line named \"{line}\" on GPIO chip \"{chip}\" or any other chip; `gpioinfo` lists \
         line names, or give the line's offset as a number"
    )]
    LineNotFound { chip: String, line: String },
    #[error(
        "GPIO chip \"{chip}\" has {num_lines} lines, so there is no line {offset}; \
         `gpioinfo {chip}` lists them"
    )]
    NoSuchOffset {
        chip: String,
        offset: u32,
        num_lines: u32,
    },
    #[error(
        "{line} is busy: another program or the gpio-keys driver holds it; `gpioinfo` shows \
         its consumer: stop that program or take the line out of the gpio-keys overlay"
    )]
    Busy { line: LineId },
    #[error("requesting {line} failed: {source}")]
    Request {
        line: LineId,
        #[source]
        source: gpiocdev::Error,
    },
    #[error("{line} failed while in use: {source}; check the wiring and `dmesg`")]
    Io {
        line: LineId,
        #[source]
        source: gpiocdev::Error,
    },
}

/// A resolved line: the chip's device path, the offset on it, and its name if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineId {
    pub chip: PathBuf,
    pub offset: u32,
    pub name: String,
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chip = self.chip.display();
        if self.name.is_empty() {
            write!(f, "GPIO line {} of {chip}", self.offset)
        } else {
            write!(f, "GPIO line {} ({}) of {chip}", self.name, self.offset)
        }
    }
}

/// The OS error number inside a gpiocdev error, if it carries one.
///
/// gpiocdev does not re-export its uAPI error type, so an error from a uAPI call is recognised
/// by its text, which is the OS error's own text.
fn errno(e: &gpiocdev::Error) -> Option<i32> {
    let text = match e {
        gpiocdev::Error::Os(errno) => return Some(errno.0),
        gpiocdev::Error::Uapi(_, inner) => inner.to_string(),
        _ => return None,
    };
    [EPERM, ENOENT, EACCES, EBUSY, ENODEV]
        .into_iter()
        .find(|n| std::io::Error::from_raw_os_error(*n).to_string() == text)
}

fn chip_error(chip: &str, e: &gpiocdev::Error) -> GpioError {
    match errno(e) {
        Some(EACCES | EPERM) => GpioError::PermissionDenied { chip: chip.into() },
        _ => GpioError::ChipNotFound {
            chip: chip.into(),
            detail: e.to_string(),
        },
    }
}

/// A chip as seen on the system, for matching a configured `chip` against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipCandidate {
    pub path: PathBuf,
    pub name: String,
    pub label: String,
}

/// Pick the chip `spec` means: its device path, its name (`gpiochip0`) or its label.
pub fn pick_chip<'a>(spec: &str, candidates: &'a [ChipCandidate]) -> Option<&'a ChipCandidate> {
    candidates
        .iter()
        .find(|c| c.path == Path::new(spec) || c.name == spec)
        .or_else(|| candidates.iter().find(|c| c.label == spec))
}

fn chip_candidates() -> Vec<ChipCandidate> {
    let paths = gpiocdev::chip::chips().unwrap_or_default();
    paths
        .into_iter()
        .filter_map(|path| {
            let info = gpiocdev::Chip::from_path(&path).ok()?.info().ok()?;
            Some(ChipCandidate {
                path,
                name: info.name,
                label: info.label,
            })
        })
        .collect()
}

/// Resolve a configured chip (path, name or label) to its device path.
fn resolve_chip(spec: &str) -> Result<PathBuf, GpioError> {
    let direct = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/dev").join(spec)
    };
    if direct.exists() {
        return gpiocdev::chip::is_chip(&direct).map_err(|e| chip_error(spec, &e));
    }
    let candidates = chip_candidates();
    if let Some(c) = pick_chip(spec, &candidates) {
        return Ok(c.path.clone());
    }
    let known: Vec<String> = candidates
        .iter()
        .map(|c| format!("{} [{}]", c.name, c.label))
        .collect();
    Err(GpioError::ChipNotFound {
        chip: spec.into(),
        detail: if known.is_empty() {
            "no GPIO chip could be opened: none present, or no permission".into()
        } else {
            format!("present: {}", known.join(", "))
        },
    })
}

/// Resolve a configured chip and line. A named line not on the configured chip is looked
/// for on every chip (the Pi 5 moved the header lines to another chip).
pub fn resolve_line(chip_spec: &str, line: &LineRef) -> Result<LineId, GpioError> {
    let chip = resolve_chip(chip_spec);
    match line {
        LineRef::Offset(offset) => {
            let path = chip?;
            let chip = gpiocdev::Chip::from_path(&path).map_err(|e| chip_error(chip_spec, &e))?;
            let num_lines = chip
                .info()
                .map_err(|e| chip_error(chip_spec, &e))?
                .num_lines;
            if *offset >= num_lines {
                return Err(GpioError::NoSuchOffset {
                    chip: chip_spec.into(),
                    offset: *offset,
                    num_lines,
                });
            }
            let name = chip.line_info(*offset).map(|i| i.name).unwrap_or_default();
            Ok(LineId {
                chip: path,
                offset: *offset,
                name,
            })
        }
        LineRef::Name(name) => {
            if let Ok(path) = &chip {
                let c = gpiocdev::Chip::from_path(path).map_err(|e| chip_error(chip_spec, &e))?;
                if let Some(info) = c.find_line_info(name) {
                    return Ok(LineId {
                        chip: path.clone(),
                        offset: info.offset,
                        name: info.name,
                    });
                }
            }
            match gpiocdev::find_named_line(name) {
                Some(found) => {
                    tracing::warn!(
                        line = %name,
                        configured = %chip_spec,
                        found_on = %found.chip.display(),
                        "GPIO line is not on the configured chip; using the one found"
                    );
                    Ok(LineId {
                        chip: found.chip,
                        offset: found.info.offset,
                        name: found.info.name,
                    })
                }
                None => match chip {
                    Err(e) => Err(e),
                    Ok(_) => Err(GpioError::LineNotFound {
                        chip: chip_spec.into(),
                        line: name.clone(),
                    }),
                },
            }
        }
    }
}

/// Request one line, with `configure` setting direction, bias and so on.
fn request_line(line: &LineId, configure: impl FnOnce(&mut Builder)) -> Result<Request, GpioError> {
    let mut builder = Request::builder();
    builder
        .on_chip(&line.chip)
        .with_consumer(CONSUMER)
        .with_line(line.offset);
    configure(&mut builder);
    builder.request().map_err(|source| match errno(&source) {
        Some(EBUSY) => GpioError::Busy { line: line.clone() },
        Some(EACCES | EPERM) => GpioError::PermissionDenied {
            chip: line.chip.display().to_string(),
        },
        _ => GpioError::Request {
            line: line.clone(),
            source,
        },
    })
}

// ---- button ----------------------------------------------------------------------------

/// The button line, requested with edge detection and kernel debounce.
#[derive(Debug)]
pub struct Button {
    req: Request,
    line: LineId,
    pressed_at_start: bool,
}

impl Button {
    pub fn open(cfg: &ButtonConfig) -> Result<Self, GpioError> {
        let line = resolve_line(&cfg.chip, &cfg.line)?;
        let req = request_line(&line, |b| {
            b.as_input()
                .with_bias(match cfg.bias {
                    Bias::PullUp => Some(gpiocdev::line::Bias::PullUp),
                    Bias::PullDown => Some(gpiocdev::line::Bias::PullDown),
                    Bias::Disabled => Some(gpiocdev::line::Bias::Disabled),
                    Bias::AsIs => None,
                })
                .with_edge_detection(EdgeDetection::BothEdges)
                .with_debounce_period(Duration::from_millis(cfg.debounce_ms.into()));
            if cfg.active_low {
                b.as_active_low();
            }
        })?;
        let pressed_at_start = req.lone_value().map_err(|source| GpioError::Io {
            line: line.clone(),
            source,
        })? == Value::Active;
        tracing::info!(%line, active_low = cfg.active_low, "button ready");
        Ok(Self {
            req,
            line,
            pressed_at_start,
        })
    }

    pub fn line(&self) -> &LineId {
        &self.line
    }

    /// Deliver presses until the receiver is dropped (then `Ok`) or the line fails.
    /// A press the daemon has no room for is dropped with a warning.
    pub async fn run(self, presses: mpsc::Sender<()>) -> Result<(), GpioError> {
        let line = self.line;
        let mut guard = ButtonGuard::new(
            Instant::now(),
            self.pressed_at_start,
            PRESS_GUARD,
            STUCK_AFTER,
        );
        let req = gpiocdev::tokio::AsyncRequest::new(self.req);
        loop {
            let check = guard.next_check();
            let signal = tokio::select! {
                event = req.read_edge_event() => {
                    let event = event.map_err(|source| GpioError::Io { line: line.clone(), source })?;
                    guard.edge(Instant::now(), event.kind == EdgeKind::Rising)
                }
                () = sleep_until(check) => guard.tick(Instant::now()),
                () = presses.closed() => return Ok(()),
            };
            match signal {
                Some(ButtonSignal::Press) => match presses.try_send(()) {
                    Ok(()) => tracing::debug!("button pressed"),
                    Err(mpsc::error::TrySendError::Full(())) => {
                        tracing::warn!("button press dropped: the daemon is busy")
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Ok(()),
                },
                Some(ButtonSignal::Stuck { held }) => tracing::warn!(
                    %line,
                    held_s = held.as_secs(),
                    "button held down: stuck, or wired the other way (check `active_low`); \
                     ignored until released"
                ),
                Some(ButtonSignal::Released) => tracing::info!(%line, "stuck button released"),
                None => {}
            }
        }
    }
}

/// Open the button and deliver its presses; `Ok` at once if the button is disabled.
pub async fn run_button(cfg: ButtonConfig, presses: mpsc::Sender<()>) -> Result<(), GpioError> {
    if !cfg.enabled {
        return Ok(());
    }
    Button::open(&cfg)?.run(presses).await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

// ---- LED -------------------------------------------------------------------------------

/// A plain output line (LED or relay), inactive at open.
#[derive(Debug)]
struct Output {
    req: Request,
    line: LineId,
}

impl Output {
    fn open(chip: &str, line: &LineRef, active_low: bool) -> Result<Self, GpioError> {
        let line = resolve_line(chip, line)?;
        let req = request_line(&line, |b| {
            b.as_output(Value::Inactive);
            if active_low {
                b.as_active_low();
            }
        })?;
        Ok(Self { req, line })
    }

    fn set(&self, on: bool) -> Result<(), GpioError> {
        let value = if on { Value::Active } else { Value::Inactive };
        self.req
            .set_lone_value(value)
            .map_err(|source| GpioError::Io {
                line: self.line.clone(),
                source,
            })
    }
}

/// The status LED.
#[derive(Debug)]
pub struct Led(Output);

impl Led {
    pub fn open(cfg: &OutputLineConfig) -> Result<Self, GpioError> {
        let out = Output::open(&cfg.chip, &cfg.line, cfg.active_low)?;
        tracing::info!(line = %out.line, "LED ready");
        Ok(Self(out))
    }

    /// Show the latest pattern from `patterns` until its sender is dropped (then the LED is
    /// switched off and `Ok` returned).
    pub async fn run(self, mut patterns: watch::Receiver<LedPattern>) -> Result<(), GpioError> {
        let mut pattern = *patterns.borrow_and_update();
        let mut start = Instant::now();
        let mut lit = None;
        loop {
            let elapsed = start.elapsed();
            let (level, left) = position(pattern, elapsed);
            if lit != Some(level) {
                self.0.set(level)?;
                lit = Some(level);
            }
            tokio::select! {
                changed = patterns.changed() => {
                    if changed.is_err() {
                        return self.0.set(false);
                    }
                    let next = *patterns.borrow_and_update();
                    if next != pattern {
                        pattern = next;
                        start = Instant::now();
                    }
                }
                () = sleep_until(left.map(|l| Instant::now() + l)) => {}
            }
        }
    }
}

// ---- relay -----------------------------------------------------------------------------

/// The door relay; released (inactive) at open, at the end of `run` and on drop.
#[derive(Debug)]
pub struct Relay {
    out: Output,
    hold: Duration,
}

impl Relay {
    pub fn open(cfg: &RelayConfig) -> Result<Self, GpioError> {
        let out = Output::open(&cfg.chip, &cfg.line, cfg.active_low)?;
        tracing::info!(line = %out.line, hold_ms = cfg.hold_ms, "relay ready");
        Ok(Self {
            out,
            hold: Duration::from_millis(cfg.hold_ms.into()),
        })
    }

    /// Close the relay for `hold_ms` per pulse received (a pulse while closed extends the
    /// hold) until the sender is dropped.
    pub async fn run(self, mut pulses: mpsc::Receiver<()>) -> Result<(), GpioError> {
        while pulses.recv().await.is_some() {
            tracing::info!(line = %self.out.line, "door relay closed");
            self.out.set(true)?;
            let mut until = Instant::now() + self.hold;
            loop {
                tokio::select! {
                    () = sleep_until(Some(until)) => break,
                    pulse = pulses.recv() => match pulse {
                        Some(()) => until = Instant::now() + self.hold,
                        None => break,
                    },
                }
            }
            self.out.set(false)?;
            tracing::info!(line = %self.out.line, "door relay released");
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A door must not stay open because the task ended: best effort on the way out.
        let _ = self.out.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_by_path_name_or_label() {
        let chips = [
            ChipCandidate {
                path: "/dev/gpiochip0".into(),
                name: "gpiochip0".into(),
                label: "pinctrl-bcm2711".into(),
            },
            ChipCandidate {
                path: "/dev/gpiochip1".into(),
                name: "gpiochip1".into(),
                label: "raspberrypi-exp-gpio".into(),
            },
        ];
        let pick = |s| pick_chip(s, &chips).map(|c| c.name.as_str());
        assert_eq!(pick("/dev/gpiochip1"), Some("gpiochip1"));
        assert_eq!(pick("gpiochip0"), Some("gpiochip0"));
        assert_eq!(pick("raspberrypi-exp-gpio"), Some("gpiochip1"));
        assert_eq!(pick("pinctrl-rp1"), None);
    }

    #[test]
    fn busy_and_permission_errors_are_recognised_and_say_what_to_do() {
        let busy = gpiocdev::Error::from(std::io::Error::from_raw_os_error(EBUSY));
        assert_eq!(errno(&busy), Some(EBUSY));
        let line = LineId {
            chip: "/dev/gpiochip0".into(),
            offset: 17,
            name: "GPIO17".into(),
        };
        let msg = GpioError::Busy { line }.to_string();
        assert!(msg.contains("GPIO17 (17) of /dev/gpiochip0"), "{msg}");
        assert!(msg.contains("gpio-keys"), "{msg}");
        let denied = gpiocdev::Error::from(std::io::Error::from_raw_os_error(EACCES));
        assert!(matches!(
            chip_error("gpiochip0", &denied),
            GpioError::PermissionDenied { .. }
        ));
    }

    #[test]
    fn a_missing_chip_is_a_typed_error_naming_it() {
        let err = resolve_line(
            "/nonexistent/gpiochip9",
            &LineRef::Name("NO_SUCH_LINE".into()),
        )
        .unwrap_err();
        assert!(
            matches!(&err, GpioError::ChipNotFound { chip, .. } if chip == "/nonexistent/gpiochip9"),
            "{err}"
        );
        let err = resolve_line("no-such-label", &LineRef::Offset(3)).unwrap_err();
        assert!(err.to_string().contains("no-such-label"), "{err}");
    }
}
