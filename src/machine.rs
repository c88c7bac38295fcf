//! The call state machine: what the device should do now.
//!
//! Sans-IO, like str0m's `Rtc`: a plain value fed with [`Event`]s (time comes in as an
//! [`Instant`] value) that returns [`Action`]s. No I/O, no clock, no threads in here; the
//! daemon's drivers turn the outside world into events and carry out the actions. It must
//! not touch Matrix, LiveKit, ALSA, GPIO or the system clock.
//!
//! # States
//!
//! | state | meaning | LED |
//! |---|---|---|
//! | `Idle` | at rest, no call by others we know of | Heartbeat (Attention with a config problem) |
//! | `Incoming` | someone else's call is up in the room; a press joins it | Pulse |
//! | `Joining` | `Join` issued, waiting for `Joined` | Blink |
//! | `Ringing` | in the call alone, waiting for an answer (`RingTimeout`) | Pulse |
//! | `InCall` | in the call with at least one other member (or within `AloneGrace`) | Solid |
//! | `Leaving` | `Leave` issued, waiting for `Left` | unchanged |
//! | `Error` | something failed; retry after an exponential backoff (`Backoff`) | FastBlink |
//! | `Stopped` | `Exit` issued; every later event is ignored | unchanged |
//!
//! The whole transition table is the `match` in [`CallMachine::handle`]; `machine/tests.rs`
//! spells it out row by row, `machine/proptests.rs` checks its promises on random runs.
//!
//! # Contract with the drivers
//!
//! - **Join / Leave.** At most one `Join` is outstanding: the machine issues no second
//!   `Join` before the driver answered the previous `Leave` with `Left`. Every `Leave` must be
//!   answered with `Left` in bounded time, also when leaving failed (send `Failed`, then
//!   `Left`: the machine then backs off in `Error`). `Leave` may come while
//!   the join is still under way (a press while joining cancels it): the driver's leave must
//!   then remove any membership that was already published.
//! - **Members.** `MemberJoined`/`MemberLeft` name *other* users, never the device itself.
//!   The machine forgets all members when it issues `Join` and when it gets `Left`, so after a
//!   `Join` the driver reports every other member already in the call (repeats are harmless);
//!   those reported before `Joined` send the machine straight to `InCall`, later ones move it
//!   from `Ringing` to `InCall`.
//! - **CallEnded** ends a call we are in with others (`InCall`): leave with the `CallEnded`
//!   sound. While `Joining` or `Ringing` it is ignored: being the only member is exactly what
//!   ringing means, and a dead SFU connection must come as `Failed`.
//! - **Incoming calls.** `IncomingCall`/`IncomingCallGone` say whether a call by others is up
//!   while the device is not in it. The machine remembers the latest one in every state and
//!   forgets it when it joins (it is joining that call). `IncomingCall` while `Idle` chimes
//!   and enters `Incoming`; coming back to rest (after `Left` or a backoff) with a call up
//!   enters `Incoming` silently.
//! - **Timers.** `ArmTimer { timer, after }` means "send `TimerFired(timer)` at `now + after`"
//!   (re-arming replaces the earlier deadline); `CancelTimer` means "don't". The machine
//!   remembers each armed timer with its deadline and ignores a `TimerFired` for a timer that
//!   is not armed or whose `now` is before the deadline (a stale fire from an earlier arming),
//!   so a driver may fire late or cancel lazily, but must pass a `now` at or after the
//!   deadline it computed. [`CallMachine::next_deadline`] gives the earliest deadline for
//!   drivers that prefer polling.
//! - A zero `ring_timeout` or `max_duration` disables that limit; a zero `warning_before_end`
//!   (or one not shorter than `max_duration`) disables the warning; a zero
//!   `leave_when_alone` leaves as soon as the last other member leaves.
//! - **Sounds.** `Ringing` and `Incoming` may be played as loops: the machine sends
//!   `StopSound` whenever it leaves `Ringing` or `Incoming`.
//!
//! # Decisions
//!
//! - **Network loss** changes no state. The drivers keep their sessions and resume (matrix-sdk
//!   sync retries, the media side reconnects); when they cannot, they send `Failed`, which is
//!   handled like any failure. The machine only remembers the loss for `ctl status`. Ring and
//!   call timers keep running, so a call that stays dead still ends.
//! - **Failures** (`Failed`, `TokenError`) while a member: play `Error`, LED FastBlink, `Leave`,
//!   and enter `Error` once `Left` arrives. When not a member: enter `Error` at once. `Error`
//!   arms `Backoff` (1 s, doubling up to 60 s, back to 1 s once a join succeeds); when it
//!   fires the machine comes back to rest (`Idle`, or `Incoming` if a call by others is
//!   up). A press in `Error` retries at once. Further failures while in `Error` only update
//!   the last error. A failure while `Leaving` plays the error feedback and still waits for
//!   `Left`, then backs off.
//! - **Presses while `Leaving`** are ignored (no second `Join` before `Left`).
//! - **Config problems** (`ConfigProblem`: a provisioning file that could not be imported, so
//!   the device runs on its previous config) change no state: the machine remembers the latest
//!   for `ctl status` and shows `Attention` instead of `Heartbeat` at rest, until the device is
//!   restarted with a good file.
//! - **Shutdown** while a member: `Leave` (unless one is under way) and arm `LeaveDeadline`
//!   (2 s); `Exit` on `Left` or when the deadline fires. Otherwise `Exit` at once.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// How long a shutdown waits for `Left` before exiting anyway.
pub const LEAVE_DEADLINE: Duration = Duration::from_secs(2);
/// First retry delay after a failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay after repeated failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Timer names; at most one of each is armed at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    RingTimeout,
    AloneGrace,
    MaxDurationWarning,
    MaxDuration,
    Backoff,
    LeaveDeadline,
}

/// Timers that belong to one call; all are cancelled when the call is left.
const CALL_TIMERS: [Timer; 4] = [
    Timer::RingTimeout,
    Timer::AloneGrace,
    Timer::MaxDurationWarning,
    Timer::MaxDuration,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The button (GPIO or `ctl press`) was pressed.
    ButtonPressed,
    /// `ctl leave`: leave if in any call state, otherwise nothing.
    LeaveRequested,
    /// The join finished: membership published and media connected.
    Joined,
    /// Another call member appeared (Matrix membership or LiveKit participant), by Matrix user id.
    MemberJoined {
        user: String,
    },
    /// Another member left.
    MemberLeft {
        user: String,
    },
    /// No valid membership remains except ours, or the SFU deleted the room.
    CallEnded,
    /// Someone else started a call in the room while we are idle.
    IncomingCall,
    /// The incoming call ended before we joined it.
    IncomingCallGone,
    /// The leave finished: membership removed, media closed.
    Left,
    /// The network or homeserver went away / came back.
    NetworkLost,
    NetworkBack,
    /// Joining or the call failed; the message is for status and logs.
    Failed {
        reason: String,
    },
    /// The access token is revoked or expired and could not be refreshed.
    TokenError {
        reason: String,
    },
    /// An allowed user asked to open the door.
    DoorOpenRequested {
        user: String,
    },
    /// A provisioning file could not be imported; the device runs on its previous config.
    ConfigProblem {
        reason: String,
    },
    TimerFired(Timer),
    Shutdown,
}

/// Feedback sounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sound {
    Button,
    Ringing,
    Joined,
    MemberLeft,
    CallEnded,
    NoAnswer,
    Warning,
    Incoming,
    Error,
}

/// LED patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedPattern {
    Heartbeat,
    /// At rest, but the installer should look at the journal (a broken provisioning file).
    Attention,
    Blink,
    Pulse,
    Solid,
    FastBlink,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Join,
    Leave,
    PlaySound(Sound),
    /// Stop whatever sound is playing (a `Ringing` or `Incoming` loop).
    StopSound,
    SetLed(LedPattern),
    PulseRelay,
    ArmTimer {
        timer: Timer,
        after: Duration,
    },
    CancelTimer(Timer),
    /// The machine is done (after `Shutdown` once the call is left).
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    Incoming,
    Joining,
    Ringing,
    InCall,
    Leaving,
    Error,
    Stopped,
}

/// Timings from the `[call]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ring_timeout: Duration,
    pub max_duration: Duration,
    pub warning_before_end: Duration,
    pub leave_when_alone: Duration,
}

/// A snapshot for `ctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    pub state: State,
    /// Number of other call members.
    pub other_members: usize,
    /// The other call members' Matrix user ids, sorted.
    pub members: Vec<String>,
    /// The reason of the last failure, kept until a join succeeds.
    pub last_error: Option<String>,
    /// When the conversation started (entering `InCall`), while in a call.
    pub call_started_at: Option<Instant>,
    /// When the next automatic retry happens, while in `Error`.
    pub retry_at: Option<Instant>,
    /// The drivers reported `NetworkLost` and not yet `NetworkBack`.
    pub network_lost: bool,
    /// A call by others is up in the room (as last reported).
    pub incoming_call: bool,
    /// The latest config problem (e.g. a broken provisioning file), kept until restart.
    pub config_problem: Option<String>,
}

/// Where `Leaving` goes once `Left` arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterLeave {
    Idle,
    Error,
    Exit,
}

#[derive(Debug)]
pub struct CallMachine {
    timings: Timings,
    state: State,
    after_leave: AfterLeave,
    /// Armed timers and their deadlines.
    timers: HashMap<Timer, Instant>,
    members: BTreeSet<String>,
    incoming: bool,
    network_lost: bool,
    last_error: Option<String>,
    config_problem: Option<String>,
    call_started_at: Option<Instant>,
    /// Consecutive failures since the last successful join.
    failures: u32,
}

impl CallMachine {
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            state: State::Idle,
            after_leave: AfterLeave::Idle,
            timers: HashMap::new(),
            members: BTreeSet::new(),
            incoming: false,
            network_lost: false,
            last_error: None,
            config_problem: None,
            call_started_at: None,
            failures: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Whether the device is (or may be) a call member: from `Join` until `Left`.
    pub fn is_member(&self) -> bool {
        matches!(
            self.state,
            State::Joining | State::Ringing | State::InCall | State::Leaving
        )
    }

    /// The earliest armed timer and its deadline.
    pub fn next_deadline(&self) -> Option<(Timer, Instant)> {
        self.timers
            .iter()
            .map(|(t, d)| (*t, *d))
            .min_by_key(|(_, d)| *d)
    }

    pub fn status(&self) -> MachineStatus {
        MachineStatus {
            state: self.state,
            other_members: self.members.len(),
            members: self.members.iter().cloned().collect(),
            last_error: self.last_error.clone(),
            call_started_at: self.call_started_at,
            retry_at: self.timers.get(&Timer::Backoff).copied(),
            network_lost: self.network_lost,
            incoming_call: self.incoming,
            config_problem: self.config_problem.clone(),
        }
    }

    /// Feed one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Stopped {
            return out;
        }
        let mut step = Step {
            m: self,
            now,
            out: &mut out,
        };
        step.event(event);
        out
    }
}

/// One `handle` call: the machine, the time and the actions produced so far.
struct Step<'a> {
    m: &'a mut CallMachine,
    now: Instant,
    out: &'a mut Vec<Action>,
}

impl Step<'_> {
    fn event(&mut self, event: Event) {
        use State::*;
        let state = self.m.state;
        match event {
            // Facts the machine remembers in every state.
            Event::NetworkLost => self.m.network_lost = true,
            Event::NetworkBack => self.m.network_lost = false,
            Event::ConfigProblem { reason } => {
                self.m.config_problem = Some(reason);
                if state == Idle {
                    self.enter_idle();
                }
            }
            Event::MemberJoined { user } => {
                self.m.members.insert(user);
                self.member_joined();
            }
            Event::MemberLeft { user } => {
                let was_there = self.m.members.remove(&user);
                if was_there && self.m.members.is_empty() && state == InCall {
                    self.last_member_left();
                }
            }
            Event::IncomingCall => {
                self.m.incoming = true;
                if state == Idle {
                    self.enter_incoming();
                }
            }
            Event::IncomingCallGone => {
                self.m.incoming = false;
                if state == Incoming {
                    self.out.push(Action::StopSound);
                    self.enter_idle();
                }
            }

            Event::ButtonPressed => match state {
                Idle | Incoming | Error => self.join(),
                Joining | Ringing | InCall => self.leave(Some(Sound::Button), AfterLeave::Idle),
                Leaving | Stopped => {}
            },
            Event::LeaveRequested => {
                if matches!(state, Joining | Ringing | InCall) {
                    self.leave(Some(Sound::Button), AfterLeave::Idle);
                }
            }
            Event::Joined => {
                if state == Joining {
                    self.m.failures = 0;
                    self.m.last_error = None;
                    if self.m.members.is_empty() {
                        self.enter_ringing();
                    } else {
                        self.enter_in_call();
                    }
                }
            }
            Event::CallEnded => {
                if state == InCall {
                    self.leave(Some(Sound::CallEnded), AfterLeave::Idle);
                }
            }
            Event::Left => {
                if state == Leaving {
                    self.left();
                }
            }
            Event::Failed { reason } => self.failed(reason),
            Event::TokenError { reason } => self.failed(format!("access token: {reason}")),
            Event::DoorOpenRequested { user: _ } => {
                if matches!(state, Ringing | InCall) {
                    self.out.push(Action::PulseRelay);
                }
            }
            Event::TimerFired(timer) => {
                let due = self.m.timers.get(&timer).is_some_and(|d| self.now >= *d);
                if due {
                    self.m.timers.remove(&timer);
                    self.timer_fired(timer);
                }
            }
            Event::Shutdown => self.shutdown(),
        }
    }

    fn timer_fired(&mut self, timer: Timer) {
        use State::*;
        match (self.m.state, timer) {
            (Ringing, Timer::RingTimeout) => self.leave(Some(Sound::NoAnswer), AfterLeave::Idle),
            (InCall, Timer::AloneGrace) => self.leave(Some(Sound::CallEnded), AfterLeave::Idle),
            (InCall, Timer::MaxDurationWarning) => self.out.push(Action::PlaySound(Sound::Warning)),
            (InCall, Timer::MaxDuration) => self.leave(Some(Sound::CallEnded), AfterLeave::Idle),
            (Error, Timer::Backoff) => self.rest(),
            (Leaving, Timer::LeaveDeadline) => self.exit(),
            // A timer armed for a state we have left (not cancelled in time): nothing to do.
            _ => {}
        }
    }

    fn member_joined(&mut self) {
        match self.m.state {
            State::Ringing => {
                self.out.push(Action::StopSound);
                self.cancel(Timer::RingTimeout);
                self.enter_in_call();
            }
            State::InCall => self.cancel(Timer::AloneGrace),
            _ => {}
        }
    }

    fn last_member_left(&mut self) {
        let grace = self.m.timings.leave_when_alone;
        if grace.is_zero() {
            self.leave(Some(Sound::CallEnded), AfterLeave::Idle);
        } else {
            self.out.push(Action::PlaySound(Sound::MemberLeft));
            self.arm(Timer::AloneGrace, grace);
        }
    }

    fn join(&mut self) {
        if self.m.state == State::Incoming {
            self.out.push(Action::StopSound);
        }
        self.cancel(Timer::Backoff);
        self.m.members.clear();
        self.m.incoming = false;
        self.out.push(Action::PlaySound(Sound::Button));
        self.out.push(Action::SetLed(LedPattern::Blink));
        self.out.push(Action::Join);
        self.m.state = State::Joining;
    }

    fn enter_ringing(&mut self) {
        self.out.push(Action::PlaySound(Sound::Ringing));
        self.out.push(Action::SetLed(LedPattern::Pulse));
        let ring = self.m.timings.ring_timeout;
        if !ring.is_zero() {
            self.arm(Timer::RingTimeout, ring);
        }
        self.m.state = State::Ringing;
    }

    fn enter_in_call(&mut self) {
        self.out.push(Action::PlaySound(Sound::Joined));
        self.out.push(Action::SetLed(LedPattern::Solid));
        let t = self.m.timings;
        if !t.max_duration.is_zero() {
            if !t.warning_before_end.is_zero() && t.warning_before_end < t.max_duration {
                self.arm(
                    Timer::MaxDurationWarning,
                    t.max_duration - t.warning_before_end,
                );
            }
            self.arm(Timer::MaxDuration, t.max_duration);
        }
        self.m.call_started_at = Some(self.now);
        self.m.state = State::InCall;
    }

    fn enter_incoming(&mut self) {
        self.out.push(Action::SetLed(LedPattern::Pulse));
        self.out.push(Action::PlaySound(Sound::Incoming));
        self.m.state = State::Incoming;
    }

    /// Back at rest after a call or a backoff: `Incoming` (without the chime, which is for a
    /// new call) if a call by others is up, else `Idle`.
    fn rest(&mut self) {
        if self.m.incoming {
            self.out.push(Action::SetLed(LedPattern::Pulse));
            self.m.state = State::Incoming;
        } else {
            self.enter_idle();
        }
    }

    fn enter_idle(&mut self) {
        let led = if self.m.config_problem.is_some() {
            LedPattern::Attention
        } else {
            LedPattern::Heartbeat
        };
        self.out.push(Action::SetLed(led));
        self.m.state = State::Idle;
    }

    fn enter_error(&mut self) {
        let doublings = self.m.failures.saturating_sub(1).min(16);
        let backoff = BACKOFF_INITIAL
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        self.arm(Timer::Backoff, backoff);
        self.m.state = State::Error;
    }

    /// Issue `Leave` (with an optional sound first) and wait for `Left` in `Leaving`.
    fn leave(&mut self, sound: Option<Sound>, after: AfterLeave) {
        if self.m.state == State::Ringing {
            self.out.push(Action::StopSound);
        }
        self.cancel_call_timers();
        if let Some(sound) = sound {
            self.out.push(Action::PlaySound(sound));
        }
        self.out.push(Action::Leave);
        self.m.after_leave = after;
        self.m.state = State::Leaving;
    }

    fn left(&mut self) {
        self.cancel_call_timers();
        self.m.members.clear();
        self.m.call_started_at = None;
        match self.m.after_leave {
            AfterLeave::Idle => self.rest(),
            AfterLeave::Error => self.enter_error(),
            AfterLeave::Exit => self.exit(),
        }
    }

    fn failed(&mut self, reason: String) {
        use State::*;
        self.m.last_error = Some(reason);
        match self.m.state {
            Idle | Incoming => {
                if self.m.state == Incoming {
                    self.out.push(Action::StopSound);
                }
                self.m.failures += 1;
                self.error_feedback();
                self.enter_error();
            }
            Joining | Ringing | InCall => {
                self.m.failures += 1;
                if self.m.state == Ringing {
                    self.out.push(Action::StopSound);
                }
                self.cancel_call_timers();
                self.error_feedback();
                self.out.push(Action::Leave);
                self.m.after_leave = AfterLeave::Error;
                self.m.state = Leaving;
            }
            // The leave itself (or something else) failed: still wait for `Left`, then back off.
            Leaving => {
                if self.m.after_leave == AfterLeave::Idle {
                    self.m.failures += 1;
                    self.error_feedback();
                    self.m.after_leave = AfterLeave::Error;
                }
            }
            Error | Stopped => {}
        }
    }

    fn error_feedback(&mut self) {
        self.out.push(Action::PlaySound(Sound::Error));
        self.out.push(Action::SetLed(LedPattern::FastBlink));
    }

    fn shutdown(&mut self) {
        use State::*;
        match self.m.state {
            Joining | Ringing | InCall => {
                self.leave(None, AfterLeave::Exit);
                self.arm(Timer::LeaveDeadline, LEAVE_DEADLINE);
            }
            Leaving => {
                if self.m.after_leave != AfterLeave::Exit {
                    self.m.after_leave = AfterLeave::Exit;
                    self.arm(Timer::LeaveDeadline, LEAVE_DEADLINE);
                }
            }
            Idle | Incoming | Error => {
                if self.m.state == Incoming {
                    self.out.push(Action::StopSound);
                }
                self.exit();
            }
            Stopped => {}
        }
    }

    fn exit(&mut self) {
        let mut armed: Vec<Timer> = self.m.timers.keys().copied().collect();
        armed.sort_by_key(|t| *t as u8);
        for timer in armed {
            self.cancel(timer);
        }
        self.out.push(Action::Exit);
        self.m.state = State::Stopped;
    }

    fn arm(&mut self, timer: Timer, after: Duration) {
        self.m.timers.insert(timer, self.now + after);
        self.out.push(Action::ArmTimer { timer, after });
    }

    /// Cancel `timer` if it is armed.
    fn cancel(&mut self, timer: Timer) {
        if self.m.timers.remove(&timer).is_some() {
            self.out.push(Action::CancelTimer(timer));
        }
    }

    fn cancel_call_timers(&mut self) {
        for timer in CALL_TIMERS {
            self.cancel(timer);
        }
    }
}
