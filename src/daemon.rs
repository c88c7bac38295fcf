//! The daemon's wiring: the only place that knows every driver.
//!
//! Turns the outside world (control socket, button, Matrix, LiveKit, timers, signals) into
//! [`Event`]s for the [`CallMachine`] and carries out the [`Action`]s it returns. Decides nothing
//! itself.

use crate::config::{CallConfig, LoadedConfig};
use crate::control::{ControlServer, Request, Status};
use crate::machine::{Action, CallMachine, Event, Timer, Timings};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// The `[call]` section as machine timings.
pub fn timings(call: &CallConfig) -> Timings {
    let s = |v: u32| Duration::from_secs(v.into());
    Timings {
        ring_timeout: s(call.ring_timeout_s),
        max_duration: s(call.max_duration_s),
        warning_before_end: s(call.warning_before_end_s),
        leave_when_alone: s(call.leave_when_alone_s),
    }
}

/// Armed timers and their deadlines.
#[derive(Debug, Default)]
struct Timers {
    armed: HashMap<Timer, tokio::time::Instant>,
}

impl Timers {
    fn arm(&mut self, timer: Timer, after: Duration) {
        self.armed
            .insert(timer, tokio::time::Instant::now() + after);
    }

    fn cancel(&mut self, timer: Timer) {
        self.armed.remove(&timer);
    }

    /// Waits for the earliest timer and disarms it; pending forever when none is armed.
    async fn next(&mut self) -> Timer {
        let Some((&timer, &at)) = self.armed.iter().min_by_key(|(_, at)| **at) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(at).await;
        self.armed.remove(&timer);
        timer
    }
}

fn state_name(machine: &CallMachine) -> String {
    format!("{:?}", machine.state()).to_lowercase()
}

/// Runs until SIGTERM/SIGINT (leaving any call first).
pub async fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    let cfg = loaded.config;
    let started = Instant::now();
    let mut machine = CallMachine::new(timings(&cfg.call));
    let status_of = |machine: &CallMachine, last_error: &Option<String>| Status {
        state: state_name(machine),
        room: cfg.matrix.room.clone(),
        participants: Vec::new(),
        last_error: last_error.clone(),
        uptime_s: started.elapsed().as_secs(),
        call_duration_s: None,
    };
    let mut last_error: Option<String> = None;
    let (status_tx, status_rx) = watch::channel(status_of(&machine, &last_error));
    let (req_tx, mut req_rx) = mpsc::channel(8);
    let _control = ControlServer::bind(&cfg.control.socket, req_tx, status_rx).await?;
    let (_event_tx, mut event_rx) = mpsc::channel::<Event>(64);
    let mut timers = Timers::default();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
    crate::systemd::notify(&format!("READY=1\nSTATUS={}", state_name(&machine)));
    tracing::info!(
        room = %cfg.matrix.room,
        socket = %cfg.control.socket.display(),
        "matrix-intercom running"
    );
    loop {
        let event = tokio::select! {
            Some((req, ack)) = req_rx.recv() => {
                let _ = ack.send(());
                match req {
                    Request::Press => Event::ButtonPressed,
                    Request::Leave => Event::LeaveRequested,
                }
            }
            Some(event) = event_rx.recv() => event,
            timer = timers.next() => Event::TimerFired(timer),
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                crate::systemd::notify("WATCHDOG=1");
                continue;
            }
            _ = sigterm.recv() => Event::Shutdown,
            _ = sigint.recv() => Event::Shutdown,
        };
        tracing::debug!(?event, "event");
        if let Event::Failed { reason } | Event::TokenError { reason } = &event {
            last_error = Some(reason.clone());
        }
        let shutdown = event == Event::Shutdown;
        if shutdown {
            crate::systemd::notify("STOPPING=1");
        }
        let before = machine.state();
        for action in machine.handle(Instant::now(), event) {
            tracing::debug!(?action, "action");
            match action {
                Action::ArmTimer { timer, after } => timers.arm(timer, after),
                Action::CancelTimer(timer) => timers.cancel(timer),
                Action::Exit => {
                    tracing::info!("stopped");
                    return Ok(());
                }
                other => tracing::info!(action = ?other, "no driver for this action yet"),
            }
        }
        if shutdown && machine.state() == crate::machine::State::Idle {
            tracing::info!("stopped");
            return Ok(());
        }
        if machine.state() != before {
            crate::systemd::notify(&format!("STATUS={}", state_name(&machine)));
        }
        status_tx.send_replace(status_of(&machine, &last_error));
    }
}
