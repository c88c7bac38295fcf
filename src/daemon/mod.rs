//! The daemon's wiring: the only place that knows every driver.
//!
//! Turns the outside world (control socket, button, Matrix, LiveKit, timers, signals) into
//! [`Event`]s for the [`CallMachine`] and carries out the [`Action`]s it returns. Decides nothing
//! itself.

mod call;
mod presence;

use crate::audio::AudioEngine;
use crate::config::{CallConfig, Config, LoadedConfig};
use crate::control::{ControlServer, Request, Status};
use crate::gpio;
use crate::machine::{Action, CallMachine, Event, LedPattern, MachineStatus, Timings};
use crate::matrix::MatrixSide;
use call::{CallDriver, Report};
use presence::Presence;
use std::sync::Arc;
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

/// The state as `ctl status` and systemd show it (`in_call`, `ringing`, ...).
fn state_name(status: &MachineStatus) -> String {
    serde_json::to_value(status.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The outputs: LED and door relay, each optional.
struct Outputs {
    led: Option<watch::Sender<LedPattern>>,
    relay: Option<mpsc::Sender<()>>,
}

impl Outputs {
    /// Opens the configured lines; a line that cannot be opened is reported and left out
    /// (the intercom still works without its LED or relay).
    fn open(cfg: &Config, led_at_start: LedPattern) -> Self {
        let led = cfg.led.as_ref().and_then(|c| match gpio::Led::open(c) {
            Ok(led) => {
                let (tx, rx) = watch::channel(led_at_start);
                tokio::spawn(async move {
                    if let Err(e) = led.run(rx).await {
                        tracing::error!("LED: {e}");
                    }
                });
                Some(tx)
            }
            Err(e) => {
                tracing::error!("LED disabled: {e}");
                None
            }
        });
        let relay = cfg.relay.as_ref().and_then(|c| match gpio::Relay::open(c) {
            Ok(relay) => {
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    if let Err(e) = relay.run(rx).await {
                        tracing::error!("relay: {e}");
                    }
                });
                Some(tx)
            }
            Err(e) => {
                tracing::error!("door relay disabled: {e}");
                None
            }
        });
        Self { led, relay }
    }
}

/// What is wrong with the provisioning file, if it is there and broken: the provisioning step
/// then kept the previous config, and the device says so until a good file comes.
fn provisioning_problem(boot_file: &std::path::Path) -> Option<String> {
    match crate::provision::check(boot_file) {
        Ok(()) => None,
        // The provisioning step runs as root; the service user may not read the boot partition.
        Err(crate::provision::ProvisionError::Unreadable { err, .. })
            if err.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tracing::debug!(file = %boot_file.display(), "provisioning file not readable by the service");
            None
        }
        Err(e) => {
            tracing::error!("{e}");
            Some(e.to_string())
        }
    }
}

/// Starts the button driver; presses arrive on the returned channel. A button that cannot be
/// opened is a startup error naming chip and line.
fn start_button(cfg: &Config) -> anyhow::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(4);
    if cfg.button.enabled {
        let button = gpio::Button::open(&cfg.button)?;
        tracing::info!(line = ?button.line(), "button ready");
        tokio::spawn(async move {
            if let Err(e) = button.run(tx).await {
                tracing::error!("button: {e}");
            }
        });
    }
    Ok(rx)
}

/// Logs in (or restores the session) and starts syncing, retrying with backoff until it
/// works; then forwards Matrix events as reports and hands the client over.
async fn start_matrix(
    cfg: Config,
    config_path: std::path::PathBuf,
    reports: mpsc::Sender<Report>,
    ready: tokio::sync::oneshot::Sender<Arc<MatrixSide>>,
) {
    let allowed = cfg
        .relay
        .as_ref()
        .map(|r| r.allowed_users.clone())
        .unwrap_or_default();
    let mut delay = Duration::from_secs(1);
    let (side, mut events) = loop {
        match MatrixSide::start(&cfg).await {
            Ok(started) => break started,
            Err(e) => {
                tracing::error!("Matrix: {e}; retrying in {} s", delay.as_secs());
                let _ = reports
                    .send(Report::MatrixDown(format!("Matrix: {e}")))
                    .await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    tracing::info!(user = %side.user_id(), device = %side.device_id(), room = %side.room_id(), "connected to the homeserver");
    if cfg.matrix.password.is_some() {
        // The session is stored: the one-time password has done its job.
        match crate::provision::scrub_password(&config_path) {
            Ok(_) => {
                tracing::info!(config = %config_path.display(), "password removed from the config")
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let _ = ready.send(Arc::new(side));
    while let Some(ev) = events.recv().await {
        if let Some(report) = call::matrix_report(ev, &allowed) {
            if reports.send(report).await.is_err() {
                return;
            }
        }
    }
}

/// Runs until SIGTERM/SIGINT (leaving any call first).
pub async fn run(loaded: LoadedConfig, boot_file: std::path::PathBuf) -> anyhow::Result<()> {
    // First, so that a SIGTERM during start-up is a clean shutdown too.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let cfg = loaded.config;
    let config_path = loaded.path;
    let started = Instant::now();
    let mut machine = CallMachine::new(timings(&cfg.call));
    let mut led_at_start = LedPattern::Heartbeat;
    if let Some(reason) = provisioning_problem(&boot_file) {
        for action in machine.handle(Instant::now(), Event::ConfigProblem { reason }) {
            if let Action::SetLed(pattern) = action {
                led_at_start = pattern;
            }
        }
    }
    let status_of = |m: &MachineStatus, connected: bool| Status {
        state: state_name(m),
        connected: connected && !m.network_lost,
        room: cfg.matrix.room.clone(),
        participants: m.members.clone(),
        last_error: m.last_error.clone(),
        config_problem: m.config_problem.clone(),
        uptime_s: started.elapsed().as_secs(),
        call_duration_s: m.call_started_at.map(|t| t.elapsed().as_secs()),
    };
    let (status_tx, status_rx) = watch::channel(status_of(&machine.status(), false));
    let (req_tx, mut req_rx) = mpsc::channel(8);
    let _control = ControlServer::bind(&cfg.control.socket, req_tx, status_rx).await?;
    let mut presses = start_button(&cfg)?;
    let outputs = Outputs::open(&cfg, led_at_start);
    let audio = Arc::new(AudioEngine::start_with_options(
        &cfg.audio,
        crate::audio::EngineOptions {
            pace_capture: cfg.audio.wall_clock,
            pace_playback: cfg.audio.wall_clock,
        },
    )?);
    let (reports_tx, mut reports) = mpsc::channel::<Report>(64);
    let (matrix_tx, mut matrix_ready) = tokio::sync::oneshot::channel();
    tokio::spawn(start_matrix(
        cfg.clone(),
        config_path,
        reports_tx.clone(),
        matrix_tx,
    ));
    let mut driver: Option<CallDriver> = None;
    let mut presence = Presence::default();
    // Why the Matrix side is not up yet, for a press that comes before it is.
    let mut matrix_error = String::from("still connecting");
    let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
    // Keeps uptime and call duration in `ctl status` current between events.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    crate::systemd::notify(&format!(
        "READY=1\nSTATUS={}",
        state_name(&machine.status())
    ));
    tracing::info!(
        room = %cfg.matrix.room,
        socket = %cfg.control.socket.display(),
        "matrix-intercom running"
    );
    loop {
        let deadline = machine.next_deadline();
        let event = tokio::select! {
            Some((req, ack)) = req_rx.recv() => {
                let _ = ack.send(());
                match req {
                    Request::Press => Event::ButtonPressed,
                    Request::Leave => Event::LeaveRequested,
                }
            }
            Some(()) = presses.recv() => Event::ButtonPressed,
            Ok(matrix) = &mut matrix_ready, if driver.is_none() => {
                driver = Some(CallDriver::new(
                    matrix,
                    audio.clone(),
                    crate::livekit::ConnectOptions::default(),
                    cfg.call.require_encryption,
                    reports_tx.clone(),
                ));
                status_tx.send_replace(status_of(&machine.status(), true));
                continue;
            }
            Some(report) = reports.recv() => match report {
                Report::MatrixDown(reason) => {
                    matrix_error = reason.clone();
                    Event::Failed { reason }
                }
                Report::Machine(event) => event,
                device => match call::presence_event(&mut presence, &device) {
                    Some(event) => event,
                    None => continue,
                },
            },
            _ = async {
                match deadline {
                    Some((_, at)) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => match deadline {
                Some((timer, _)) => Event::TimerFired(timer),
                None => continue,
            },
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                crate::systemd::notify("WATCHDOG=1");
                continue;
            }
            _ = refresh.tick() => {
                status_tx.send_replace(status_of(&machine.status(), driver.is_some()));
                continue;
            }
            _ = sigterm.recv() => Event::Shutdown,
            _ = sigint.recv() => Event::Shutdown,
        };
        tracing::debug!(?event, "event");
        if event == Event::Shutdown {
            crate::systemd::notify("STOPPING=1");
        }
        if event == Event::Left {
            presence.clear();
        }
        let before = machine.state();
        for action in machine.handle(Instant::now(), event) {
            tracing::debug!(?action, "action");
            match action {
                // Timers are polled through `next_deadline`.
                Action::ArmTimer { .. } | Action::CancelTimer(_) => {}
                Action::SetLed(pattern) => {
                    if let Some(led) = &outputs.led {
                        led.send_replace(pattern);
                    }
                }
                Action::PulseRelay => {
                    if let Some(relay) = &outputs.relay {
                        let _ = relay.try_send(());
                    }
                }
                Action::Join => match driver.as_mut() {
                    Some(d) => d.join(),
                    None => {
                        let _ = reports_tx.try_send(Report::Machine(Event::Failed {
                            reason: format!("not connected to the homeserver yet ({matrix_error})"),
                        }));
                    }
                },
                Action::Leave => match driver.as_mut() {
                    Some(d) => d.leave(),
                    None => {
                        let _ = reports_tx.try_send(Report::Machine(Event::Left));
                    }
                },
                Action::PlaySound(sound) => audio.play(sound),
                Action::StopSound => audio.stop_sound(),
                Action::Exit => {
                    tracing::info!("stopped");
                    return Ok(());
                }
            }
        }
        let status = machine.status();
        if status.state != before {
            tracing::info!(state = %state_name(&status), "state");
            crate::systemd::notify(&format!("STATUS={}", state_name(&status)));
        }
        status_tx.send_replace(status_of(&status, driver.is_some()));
    }
}
