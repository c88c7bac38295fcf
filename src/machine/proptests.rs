//! Property test: whatever happens, the device never stays a call member, never joins twice
//! without leaving in between, and exits after `Shutdown`.

use super::tests::{timings, ALICE, BOB};
use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// One step of a random run: an event, a pause, or a driver firing its earliest timer.
#[derive(Debug, Clone)]
enum Op {
    Event(Event),
    Wait(u64),
    FireDue,
}

fn any_timer() -> impl Strategy<Value = Timer> {
    prop_oneof![
        Just(Timer::RingTimeout),
        Just(Timer::AloneGrace),
        Just(Timer::MaxDurationWarning),
        Just(Timer::MaxDuration),
        Just(Timer::Backoff),
        Just(Timer::LeaveDeadline),
    ]
}

fn any_user() -> impl Strategy<Value = String> {
    prop_oneof![Just(ALICE.to_string()), Just(BOB.to_string())]
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::ButtonPressed),
        1 => Just(Event::LeaveRequested),
        3 => Just(Event::Joined),
        3 => any_user().prop_map(|user| Event::MemberJoined { user }),
        3 => any_user().prop_map(|user| Event::MemberLeft { user }),
        1 => Just(Event::CallEnded),
        1 => Just(Event::IncomingCall),
        1 => Just(Event::IncomingCallGone),
        3 => Just(Event::Left),
        1 => Just(Event::NetworkLost),
        1 => Just(Event::NetworkBack),
        1 => Just(Event::Failed { reason: "x".into() }),
        1 => Just(Event::TokenError { reason: "y".into() }),
        1 => any_user().prop_map(|user| Event::DoorOpenRequested { user }),
        1 => any_timer().prop_map(Event::TimerFired),
        1 => Just(Event::ConfigProblem { reason: "z".into() }),
        1 => Just(Event::Shutdown),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any_event().prop_map(Op::Event),
        1 => (0u64..120_000).prop_map(Op::Wait),
        2 => Just(Op::FireDue),
    ]
}

/// A model driver: carries out the actions and checks the machine's promises.
struct Driver {
    m: CallMachine,
    now: Instant,
    member: bool,
    leave_pending: bool,
    exited: bool,
    timers: HashMap<Timer, Instant>,
}

impl Driver {
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        if event == Event::Left {
            self.leave_pending = false;
        }
        let actions = self.m.handle(self.now, event.clone());
        for a in actions {
            prop_assert!(!self.exited, "{a:?} after Exit");
            match a {
                Action::Join => {
                    prop_assert!(!self.member, "second Join without Leave ({event:?})");
                    prop_assert!(!self.leave_pending, "Join before the Leave was answered");
                    self.member = true;
                }
                Action::Leave => {
                    prop_assert!(self.member, "Leave while not a member ({event:?})");
                    self.member = false;
                    self.leave_pending = true;
                }
                Action::ArmTimer { timer, after } => {
                    self.timers.insert(timer, self.now + after);
                }
                Action::CancelTimer(timer) => {
                    self.timers.remove(&timer);
                }
                Action::Exit => self.exited = true,
                _ => {}
            }
        }
        prop_assert_eq!(self.m.state() == State::Stopped, self.exited);
        Ok(())
    }

    fn fire_due(&mut self) -> Result<bool, TestCaseError> {
        let Some((&timer, &at)) = self.timers.iter().min_by_key(|(_, at)| **at) else {
            return Ok(false);
        };
        self.timers.remove(&timer);
        self.now = self.now.max(at);
        self.feed(Event::TimerFired(timer))?;
        Ok(true)
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut d = Driver {
        m: CallMachine::new(timings()),
        now: Instant::now(),
        member: false,
        leave_pending: false,
        exited: false,
        timers: HashMap::new(),
    };
    for op in ops {
        match op {
            Op::Event(e) => d.feed(e)?,
            Op::Wait(ms) => d.now += Duration::from_millis(ms),
            Op::FireDue => {
                d.fire_due()?;
            }
        }
    }
    d.feed(Event::Shutdown)?;
    // The driver answers an outstanding Leave with Left, and fires timers, until Exit.
    for _ in 0..10 {
        if d.exited {
            break;
        }
        if d.leave_pending {
            d.feed(Event::Left)?;
        } else if !d.fire_due()? {
            break;
        }
    }
    prop_assert!(d.exited, "no Exit; machine in {:?}", d.m.state());
    prop_assert!(!d.member, "still a member at exit");
    prop_assert!(!d.m.is_member());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1c_0ffe),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_left_a_member_and_always_exits(ops in prop::collection::vec(any_op(), 0..60)) {
        run(ops)?;
    }
}
