//! The call machine's transition table, row by row, and a property test of its promises.

use super::*;

pub(super) const ALICE: &str = "@alice:example.org";
pub(super) const BOB: &str = "@bob:example.org";

pub(super) fn timings() -> Timings {
    Timings {
        ring_timeout: Duration::from_secs(60),
        max_duration: Duration::from_secs(600),
        warning_before_end: Duration::from_secs(10),
        leave_when_alone: Duration::from_secs(5),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn joined_by(user: &str) -> Event {
    Event::MemberJoined { user: user.into() }
}

fn left_by(user: &str) -> Event {
    Event::MemberLeft { user: user.into() }
}

fn failed() -> Event {
    Event::Failed {
        reason: "boom".into(),
    }
}

fn fire(timer: Timer) -> Event {
    Event::TimerFired(timer)
}

fn arm(timer: Timer, after: Duration) -> Action {
    Action::ArmTimer { timer, after }
}

/// Where a row starts: the events (all at t0) that lead there from a fresh machine.
#[derive(Debug, Clone, Copy)]
enum Start {
    Idle,
    Incoming,
    Joining,
    /// Joining, and another member was already reported.
    JoiningWithMember,
    Ringing,
    /// In the call with alice.
    InCall,
    /// In the call, alice just left: `AloneGrace` armed.
    InCallAlone,
    /// Leaving after a press in `Ringing`.
    Leaving,
    /// Leaving, and a call by others is up.
    LeavingWithIncoming,
    /// Leaving because the call failed.
    LeavingForError,
    /// Leaving after a press, and then the leave failed.
    LeavingAfterFailure,
    /// Leaving because of `Shutdown`.
    ShuttingDown,
    Error,
    /// In `Error` while someone else's call is up.
    ErrorWithIncoming,
    Stopped,
}

impl Start {
    fn setup(self) -> Vec<Event> {
        use Event::*;
        match self {
            Start::Idle => vec![],
            Start::Incoming => vec![IncomingCall],
            Start::Joining => vec![ButtonPressed],
            Start::JoiningWithMember => vec![ButtonPressed, joined_by(ALICE)],
            Start::Ringing => vec![ButtonPressed, Joined],
            Start::InCall => vec![ButtonPressed, joined_by(ALICE), Joined],
            Start::InCallAlone => vec![ButtonPressed, joined_by(ALICE), Joined, left_by(ALICE)],
            Start::Leaving => vec![ButtonPressed, Joined, ButtonPressed],
            Start::LeavingWithIncoming => vec![ButtonPressed, Joined, ButtonPressed, IncomingCall],
            Start::LeavingForError => vec![ButtonPressed, Joined, failed()],
            Start::LeavingAfterFailure => vec![ButtonPressed, Joined, ButtonPressed, failed()],
            Start::ShuttingDown => vec![ButtonPressed, Joined, Shutdown],
            Start::Error => vec![failed()],
            Start::ErrorWithIncoming => vec![failed(), IncomingCall],
            Start::Stopped => vec![Shutdown],
        }
    }
}

struct Row {
    from: Start,
    /// Seconds after the set-up at which the event arrives.
    at: u64,
    event: Event,
    to: State,
    actions: Vec<Action>,
}

fn row(from: Start, event: Event, to: State, actions: Vec<Action>) -> Row {
    Row {
        from,
        at: 0,
        event,
        to,
        actions,
    }
}

fn row_at(from: Start, at: u64, event: Event, to: State, actions: Vec<Action>) -> Row {
    Row {
        from,
        at,
        event,
        to,
        actions,
    }
}

/// The transition table. Actions are listed in the order the machine returns them.
fn table() -> Vec<Row> {
    use Action::*;
    use Event::*;
    use LedPattern as Led;
    use Timer::*;
    let join = || vec![PlaySound(Sound::Button), SetLed(Led::Blink), Join];
    let error_backoff = |s| {
        vec![
            PlaySound(Sound::Error),
            SetLed(Led::FastBlink),
            arm(Backoff, secs(s)),
        ]
    };
    let in_call = |prefix: Vec<Action>| {
        let mut v = prefix;
        v.extend([
            PlaySound(Sound::Joined),
            SetLed(Led::Solid),
            arm(MaxDurationWarning, secs(590)),
            arm(MaxDuration, secs(600)),
        ]);
        v
    };
    let cancel_call = || vec![CancelTimer(MaxDurationWarning), CancelTimer(MaxDuration)];
    let with = |mut a: Vec<Action>, b: Vec<Action>| {
        a.extend(b);
        a
    };
    let door = || DoorOpenRequested { user: BOB.into() };
    let token = || TokenError {
        reason: "revoked".into(),
    };
    vec![
        // Idle
        row(Start::Idle, ButtonPressed, State::Joining, join()),
        row(Start::Idle, LeaveRequested, State::Idle, vec![]),
        row(
            Start::Idle,
            IncomingCall,
            State::Incoming,
            vec![SetLed(Led::Pulse), PlaySound(Sound::Incoming)],
        ),
        row(Start::Idle, failed(), State::Error, error_backoff(1)),
        row(Start::Idle, token(), State::Error, error_backoff(1)),
        row(Start::Idle, Shutdown, State::Stopped, vec![Exit]),
        row(Start::Idle, door(), State::Idle, vec![]),
        row(Start::Idle, Joined, State::Idle, vec![]),
        row(Start::Idle, Left, State::Idle, vec![]),
        row(Start::Idle, CallEnded, State::Idle, vec![]),
        row(Start::Idle, NetworkLost, State::Idle, vec![]),
        row(Start::Idle, fire(RingTimeout), State::Idle, vec![]),
        // Incoming
        row(
            Start::Incoming,
            ButtonPressed,
            State::Joining,
            with(vec![StopSound], join()),
        ),
        row(
            Start::Incoming,
            IncomingCallGone,
            State::Idle,
            vec![StopSound, SetLed(Led::Heartbeat)],
        ),
        row(Start::Incoming, IncomingCall, State::Incoming, vec![]),
        row(
            Start::Incoming,
            failed(),
            State::Error,
            with(vec![StopSound], error_backoff(1)),
        ),
        row(Start::Incoming, door(), State::Incoming, vec![]),
        row(Start::Incoming, LeaveRequested, State::Incoming, vec![]),
        row(
            Start::Incoming,
            Shutdown,
            State::Stopped,
            vec![StopSound, Exit],
        ),
        // Joining
        row(
            Start::Joining,
            Joined,
            State::Ringing,
            vec![
                PlaySound(Sound::Ringing),
                SetLed(Led::Pulse),
                arm(RingTimeout, secs(60)),
            ],
        ),
        row(
            Start::JoiningWithMember,
            Joined,
            State::InCall,
            in_call(vec![]),
        ),
        row(Start::Joining, joined_by(BOB), State::Joining, vec![]),
        row(
            Start::Joining,
            ButtonPressed,
            State::Leaving,
            vec![PlaySound(Sound::Button), Leave],
        ),
        row(
            Start::Joining,
            LeaveRequested,
            State::Leaving,
            vec![PlaySound(Sound::Button), Leave],
        ),
        row(
            Start::Joining,
            failed(),
            State::Leaving,
            vec![PlaySound(Sound::Error), SetLed(Led::FastBlink), Leave],
        ),
        row(
            Start::Joining,
            Shutdown,
            State::Leaving,
            vec![Leave, arm(LeaveDeadline, secs(2))],
        ),
        row(Start::Joining, CallEnded, State::Joining, vec![]),
        row(Start::Joining, door(), State::Joining, vec![]),
        row(Start::Joining, Left, State::Joining, vec![]),
        // Ringing
        row(
            Start::Ringing,
            joined_by(ALICE),
            State::InCall,
            in_call(vec![StopSound, CancelTimer(RingTimeout)]),
        ),
        row(
            Start::Ringing,
            ButtonPressed,
            State::Leaving,
            vec![
                StopSound,
                CancelTimer(RingTimeout),
                PlaySound(Sound::Button),
                Leave,
            ],
        ),
        row(
            Start::Ringing,
            LeaveRequested,
            State::Leaving,
            vec![
                StopSound,
                CancelTimer(RingTimeout),
                PlaySound(Sound::Button),
                Leave,
            ],
        ),
        row_at(
            Start::Ringing,
            60,
            fire(RingTimeout),
            State::Leaving,
            vec![StopSound, PlaySound(Sound::NoAnswer), Leave],
        ),
        // A fire before the deadline is stale (from an earlier arming).
        row_at(
            Start::Ringing,
            30,
            fire(RingTimeout),
            State::Ringing,
            vec![],
        ),
        row_at(Start::Ringing, 99, fire(AloneGrace), State::Ringing, vec![]),
        row(Start::Ringing, CallEnded, State::Ringing, vec![]),
        row(Start::Ringing, door(), State::Ringing, vec![PulseRelay]),
        row(
            Start::Ringing,
            failed(),
            State::Leaving,
            vec![
                StopSound,
                CancelTimer(RingTimeout),
                PlaySound(Sound::Error),
                SetLed(Led::FastBlink),
                Leave,
            ],
        ),
        row(
            Start::Ringing,
            Shutdown,
            State::Leaving,
            vec![
                StopSound,
                CancelTimer(RingTimeout),
                Leave,
                arm(LeaveDeadline, secs(2)),
            ],
        ),
        row(Start::Ringing, NetworkLost, State::Ringing, vec![]),
        row(Start::Ringing, NetworkBack, State::Ringing, vec![]),
        // In call
        row(
            Start::InCall,
            ButtonPressed,
            State::Leaving,
            with(cancel_call(), vec![PlaySound(Sound::Button), Leave]),
        ),
        row(
            Start::InCall,
            LeaveRequested,
            State::Leaving,
            with(cancel_call(), vec![PlaySound(Sound::Button), Leave]),
        ),
        row(
            Start::InCall,
            left_by(ALICE),
            State::InCall,
            vec![PlaySound(Sound::MemberLeft), arm(AloneGrace, secs(5))],
        ),
        row(Start::InCall, joined_by(BOB), State::InCall, vec![]),
        row(Start::InCall, left_by(BOB), State::InCall, vec![]),
        row(
            Start::InCall,
            CallEnded,
            State::Leaving,
            with(cancel_call(), vec![PlaySound(Sound::CallEnded), Leave]),
        ),
        row_at(
            Start::InCall,
            590,
            fire(MaxDurationWarning),
            State::InCall,
            vec![PlaySound(Sound::Warning)],
        ),
        row_at(
            Start::InCall,
            600,
            fire(MaxDuration),
            State::Leaving,
            vec![
                CancelTimer(MaxDurationWarning),
                PlaySound(Sound::CallEnded),
                Leave,
            ],
        ),
        row_at(Start::InCall, 100, fire(MaxDuration), State::InCall, vec![]),
        row(Start::InCall, door(), State::InCall, vec![PulseRelay]),
        row(
            Start::InCall,
            failed(),
            State::Leaving,
            with(
                cancel_call(),
                vec![PlaySound(Sound::Error), SetLed(Led::FastBlink), Leave],
            ),
        ),
        row(
            Start::InCall,
            token(),
            State::Leaving,
            with(
                cancel_call(),
                vec![PlaySound(Sound::Error), SetLed(Led::FastBlink), Leave],
            ),
        ),
        row(
            Start::InCall,
            Shutdown,
            State::Leaving,
            with(cancel_call(), vec![Leave, arm(LeaveDeadline, secs(2))]),
        ),
        row(Start::InCall, NetworkLost, State::InCall, vec![]),
        row(Start::InCall, Joined, State::InCall, vec![]),
        row(Start::InCall, IncomingCall, State::InCall, vec![]),
        // In call, alone within the grace period
        row(
            Start::InCallAlone,
            joined_by(ALICE),
            State::InCall,
            vec![CancelTimer(AloneGrace)],
        ),
        row_at(
            Start::InCallAlone,
            5,
            fire(AloneGrace),
            State::Leaving,
            with(cancel_call(), vec![PlaySound(Sound::CallEnded), Leave]),
        ),
        row_at(
            Start::InCallAlone,
            2,
            fire(AloneGrace),
            State::InCall,
            vec![],
        ),
        row(
            Start::InCallAlone,
            ButtonPressed,
            State::Leaving,
            vec![
                CancelTimer(AloneGrace),
                CancelTimer(MaxDurationWarning),
                CancelTimer(MaxDuration),
                PlaySound(Sound::Button),
                Leave,
            ],
        ),
        // Leaving
        row(
            Start::Leaving,
            Left,
            State::Idle,
            vec![SetLed(Led::Heartbeat)],
        ),
        row(Start::Leaving, ButtonPressed, State::Leaving, vec![]),
        row(Start::Leaving, IncomingCall, State::Leaving, vec![]),
        row(
            Start::LeavingWithIncoming,
            Left,
            State::Incoming,
            vec![SetLed(Led::Pulse)],
        ),
        row(Start::Leaving, LeaveRequested, State::Leaving, vec![]),
        row(Start::Leaving, Joined, State::Leaving, vec![]),
        row(Start::Leaving, door(), State::Leaving, vec![]),
        row(
            Start::Leaving,
            Shutdown,
            State::Leaving,
            vec![arm(LeaveDeadline, secs(2))],
        ),
        row(
            Start::Leaving,
            failed(),
            State::Leaving,
            vec![PlaySound(Sound::Error), SetLed(Led::FastBlink)],
        ),
        row(
            Start::LeavingAfterFailure,
            Left,
            State::Error,
            vec![arm(Backoff, secs(1))],
        ),
        row(Start::LeavingForError, failed(), State::Leaving, vec![]),
        row(
            Start::LeavingForError,
            Left,
            State::Error,
            vec![arm(Backoff, secs(1))],
        ),
        row(
            Start::LeavingForError,
            ButtonPressed,
            State::Leaving,
            vec![],
        ),
        row(
            Start::ShuttingDown,
            Left,
            State::Stopped,
            vec![CancelTimer(LeaveDeadline), Exit],
        ),
        row_at(
            Start::ShuttingDown,
            2,
            fire(LeaveDeadline),
            State::Stopped,
            vec![Exit],
        ),
        row(Start::ShuttingDown, ButtonPressed, State::Leaving, vec![]),
        row(Start::ShuttingDown, Shutdown, State::Leaving, vec![]),
        row(Start::ShuttingDown, failed(), State::Leaving, vec![]),
        // Error
        row_at(
            Start::Error,
            1,
            fire(Backoff),
            State::Idle,
            vec![SetLed(Led::Heartbeat)],
        ),
        row_at(
            Start::ErrorWithIncoming,
            1,
            fire(Backoff),
            State::Incoming,
            vec![SetLed(Led::Pulse)],
        ),
        row(
            Start::Error,
            ButtonPressed,
            State::Joining,
            with(vec![CancelTimer(Backoff)], join()),
        ),
        row(Start::Error, failed(), State::Error, vec![]),
        row(Start::Error, LeaveRequested, State::Error, vec![]),
        row(Start::Error, IncomingCall, State::Error, vec![]),
        row(Start::Error, Left, State::Error, vec![]),
        row(
            Start::Error,
            Shutdown,
            State::Stopped,
            vec![CancelTimer(Backoff), Exit],
        ),
        // Stopped
        row(Start::Stopped, ButtonPressed, State::Stopped, vec![]),
        row(Start::Stopped, IncomingCall, State::Stopped, vec![]),
        row(Start::Stopped, Shutdown, State::Stopped, vec![]),
    ]
}

#[test]
fn transition_table() {
    let mut failures = Vec::new();
    for (i, r) in table().into_iter().enumerate() {
        let t0 = Instant::now();
        let mut m = CallMachine::new(timings());
        for e in r.from.setup() {
            m.handle(t0, e);
        }
        let actions = m.handle(t0 + secs(r.at), r.event.clone());
        if m.state() != r.to || actions != r.actions {
            failures.push(format!(
                "row {i}: {:?} + {:?} at {} s\n  expected {:?} {:?}\n  got      {:?} {:?}",
                r.from,
                r.event,
                r.at,
                r.to,
                r.actions,
                m.state(),
                actions
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `Start` set-up reaches the state its name promises.
#[test]
fn setups_reach_their_states() {
    let expect = [
        (Start::Idle, State::Idle),
        (Start::Incoming, State::Incoming),
        (Start::Joining, State::Joining),
        (Start::JoiningWithMember, State::Joining),
        (Start::Ringing, State::Ringing),
        (Start::InCall, State::InCall),
        (Start::InCallAlone, State::InCall),
        (Start::Leaving, State::Leaving),
        (Start::LeavingWithIncoming, State::Leaving),
        (Start::LeavingForError, State::Leaving),
        (Start::LeavingAfterFailure, State::Leaving),
        (Start::ShuttingDown, State::Leaving),
        (Start::Error, State::Error),
        (Start::ErrorWithIncoming, State::Error),
        (Start::Stopped, State::Stopped),
    ];
    for (from, state) in expect {
        let t0 = Instant::now();
        let mut m = CallMachine::new(timings());
        for e in from.setup() {
            m.handle(t0, e);
        }
        assert_eq!(m.state(), state, "{from:?}");
    }
}

fn backoff_armed(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::ArmTimer {
            timer: Timer::Backoff,
            after,
        } => Some(*after),
        _ => None,
    })
}

#[test]
fn backoff_doubles_up_to_a_minute_and_resets_after_a_successful_join() {
    let mut now = Instant::now();
    let mut m = CallMachine::new(timings());
    let mut seen = Vec::new();
    for _ in 0..9 {
        let a = m.handle(now, failed());
        let after = backoff_armed(&a).expect("backoff armed");
        seen.push(after.as_secs());
        now += after;
        m.handle(now, fire(Timer::Backoff));
        assert_eq!(m.state(), State::Idle);
    }
    assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);

    // A join that works resets the backoff.
    m.handle(now, Event::ButtonPressed);
    m.handle(now, Event::Joined);
    let a = m.handle(now, failed());
    assert_eq!(backoff_armed(&a), None, "a member leaves first");
    let a = m.handle(now, Event::Left);
    assert_eq!(backoff_armed(&a), Some(secs(1)));
}

#[test]
fn a_stale_fire_from_an_earlier_arming_is_ignored() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(timings());
    for e in Start::InCallAlone.setup() {
        m.handle(t0, e);
    }
    // AloneGrace armed for t0+5; alice returns at 1 s and leaves again at 3 s: re-armed for 8 s.
    m.handle(t0 + secs(1), joined_by(ALICE));
    m.handle(t0 + secs(3), left_by(ALICE));
    assert_eq!(m.handle(t0 + secs(5), fire(Timer::AloneGrace)), vec![]);
    assert_eq!(m.state(), State::InCall);
    let a = m.handle(t0 + secs(8), fire(Timer::AloneGrace));
    assert!(a.contains(&Action::Leave), "{a:?}");
    // A second fire of the same timer is stale too.
    assert_eq!(m.handle(t0 + secs(9), fire(Timer::AloneGrace)), vec![]);
}

#[test]
fn zero_timings_disable_limits_and_leave_at_once_when_alone() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(Timings {
        ring_timeout: Duration::ZERO,
        max_duration: Duration::ZERO,
        warning_before_end: Duration::ZERO,
        leave_when_alone: Duration::ZERO,
    });
    m.handle(t0, Event::ButtonPressed);
    let a = m.handle(t0, Event::Joined);
    assert!(
        !a.iter().any(|a| matches!(a, Action::ArmTimer { .. })),
        "{a:?}"
    );
    let a = m.handle(t0, joined_by(ALICE));
    assert!(
        !a.iter().any(|a| matches!(a, Action::ArmTimer { .. })),
        "{a:?}"
    );
    let a = m.handle(t0, left_by(ALICE));
    assert_eq!(a, vec![Action::PlaySound(Sound::CallEnded), Action::Leave]);
}

#[test]
fn no_warning_when_it_would_come_before_the_call_starts() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(Timings {
        warning_before_end: secs(600),
        ..timings()
    });
    for e in Start::InCall.setup() {
        m.handle(t0, e);
    }
    assert_eq!(
        m.next_deadline(),
        Some((Timer::MaxDuration, t0 + secs(600)))
    );
}

#[test]
fn status_reports_members_errors_and_call_start() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(timings());
    m.handle(t0, failed());
    let s = m.status();
    assert_eq!(s.state, State::Error);
    assert_eq!(s.last_error.as_deref(), Some("boom"));
    assert_eq!(s.retry_at, Some(t0 + secs(1)));

    m.handle(t0 + secs(1), Event::ButtonPressed);
    m.handle(t0 + secs(1), joined_by(BOB));
    m.handle(t0 + secs(1), joined_by(ALICE));
    assert!(m.is_member());
    m.handle(t0 + secs(2), Event::Joined);
    m.handle(t0 + secs(3), Event::NetworkLost);
    let s = m.status();
    assert_eq!(s.state, State::InCall);
    assert_eq!(s.other_members, 2);
    assert_eq!(s.members, vec![ALICE.to_string(), BOB.to_string()]);
    assert_eq!(s.call_started_at, Some(t0 + secs(2)));
    assert_eq!(s.last_error, None, "a successful join clears the error");
    assert_eq!(s.retry_at, None);
    assert!(s.network_lost);

    m.handle(t0 + secs(4), Event::NetworkBack);
    m.handle(t0 + secs(4), Event::ButtonPressed);
    m.handle(t0 + secs(5), Event::Left);
    let s = m.status();
    assert_eq!(s.state, State::Idle);
    assert_eq!(s.other_members, 0);
    assert_eq!(s.call_started_at, None);
    assert!(!s.network_lost);
    assert!(!m.is_member());
}

#[test]
fn a_config_problem_shows_attention_at_rest_and_in_status_without_blocking_calls() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(timings());
    let problem = || Event::ConfigProblem {
        reason: "provisioning file not imported".into(),
    };
    assert_eq!(
        m.handle(t0, problem()),
        vec![Action::SetLed(LedPattern::Attention)]
    );
    assert_eq!(m.state(), State::Idle);
    assert_eq!(
        m.status().config_problem.as_deref(),
        Some("provisioning file not imported")
    );

    // Calls still work; the call's own LED patterns win while in it.
    assert!(m.handle(t0, Event::ButtonPressed).contains(&Action::Join));
    m.handle(t0, Event::Joined);
    m.handle(t0, joined_by(ALICE));
    assert_eq!(m.state(), State::InCall);
    // Learned mid-call: remembered, the call's LED stays.
    assert!(!m
        .handle(t0, problem())
        .iter()
        .any(|a| matches!(a, Action::SetLed(_))));
    m.handle(t0, Event::ButtonPressed);
    let back = m.handle(t0 + secs(1), Event::Left);
    assert_eq!(m.state(), State::Idle);
    assert!(
        back.contains(&Action::SetLed(LedPattern::Attention)),
        "{back:?}"
    );
    assert!(m.status().config_problem.is_some());
}

#[test]
fn token_error_is_reported_as_such() {
    let mut m = CallMachine::new(timings());
    m.handle(
        Instant::now(),
        Event::TokenError {
            reason: "M_UNKNOWN_TOKEN".into(),
        },
    );
    assert_eq!(
        m.status().last_error.as_deref(),
        Some("access token: M_UNKNOWN_TOKEN")
    );
}

/// The same promise when the driver never answers the Leave: the deadline ends it.
#[test]
fn shutdown_exits_at_the_deadline_when_left_never_comes() {
    let t0 = Instant::now();
    let mut m = CallMachine::new(timings());
    for e in Start::InCall.setup() {
        m.handle(t0, e);
    }
    m.handle(t0 + secs(1), Event::Shutdown);
    assert_eq!(m.handle(t0 + secs(2), fire(Timer::LeaveDeadline)), vec![]);
    assert_eq!(
        m.handle(t0 + secs(3), fire(Timer::LeaveDeadline)),
        vec![Action::Exit]
    );
    assert_eq!(m.handle(t0 + secs(3), Event::Left), vec![]);
}
