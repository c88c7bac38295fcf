//! The call state machine: what the device should do now.
//!
//! Sans-IO, like str0m's `Rtc`: a plain value fed with [`Event`]s (time comes in as an
//! [`Instant`] value) that returns [`Action`]s. No I/O, no clock, no threads in here; the
//! daemon's drivers turn the outside world into events and carry out the actions.
//!
//! STUB: interface only; the transition logic and its tests are being written.

use std::time::{Duration, Instant};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The button (GPIO or `ctl press`) was pressed.
    ButtonPressed,
    /// `ctl leave`: leave if in any call state, otherwise nothing.
    LeaveRequested,
    /// The join finished: membership published and media connected.
    Joined,
    /// Another call member appeared (Matrix membership or LiveKit participant), by Matrix user id.
    MemberJoined { user: String },
    /// Another member left.
    MemberLeft { user: String },
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
    Failed { reason: String },
    /// The access token is revoked or expired and could not be refreshed.
    TokenError { reason: String },
    /// An allowed user asked to open the door.
    DoorOpenRequested { user: String },
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
    StopSound,
    SetLed(LedPattern),
    PulseRelay,
    ArmTimer { timer: Timer, after: Duration },
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

#[derive(Debug)]
pub struct CallMachine {
    timings: Timings,
    state: State,
}

impl CallMachine {
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            state: State::Idle,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Feed one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, _now: Instant, _event: Event) -> Vec<Action> {
        Vec::new()
    }
}
