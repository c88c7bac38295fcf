//! Starting the dev stack from tests: [`DevStack::start`] runs the `mi-devstack` binary on free
//! ports, waits (bounded) for its stack file and returns a [`DevStackHandle`] that stops it on
//! drop. Also finds the Python interpreter tests should use. Owns the `mi-devstack` child
//! process only; everything inside the stack belongs to that process.

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::info::StackInfo;

/// Name of the devstack's own log (its stdout and stderr) inside the working directory.
pub const DEVSTACK_LOG: &str = "devstack.log";
/// The venv `scripts/setup.sh` creates in the repository.
const REPO_VENV_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/venv/bin/python");
/// The venv on the development machine.
const DEV_MACHINE_PYTHON: &str = "/work/cache/venv/bin/python";

/// The Python with matrix-synapse that tests should use: `MI_PYTHON`, else the repository's
/// `.cache/venv`, else the development machine's venv. `Ok(None)` when there is none.
pub fn test_python() -> Result<Option<PathBuf>, String> {
    if let Some(p) = std::env::var_os("MI_PYTHON") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(Some(p))
        } else {
            Err(format!("MI_PYTHON={} does not exist", p.display()))
        };
    }
    Ok([REPO_VENV_PYTHON, DEV_MACHINE_PYTHON]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists()))
}

/// [`test_python`] for a test that needs Synapse: under `CI=true` a missing Python panics (the
/// test fails); otherwise it prints a loud SKIPPED line and returns `None`.
pub fn test_python_or_skip(test: &str) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    match test_python() {
        Ok(Some(p)) => Some(p),
        Ok(None) if !ci => {
            eprintln!("SKIPPED {test}: no Python with matrix-synapse (set MI_PYTHON or run scripts/setup.sh)");
            None
        }
        Ok(None) => panic!("{test}: CI is set but there is no Python with matrix-synapse; set MI_PYTHON or run scripts/setup.sh"),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// What [`DevStack::start`] runs; every field has a working default.
#[derive(Debug, Clone)]
pub struct DevStackOptions {
    /// The `mi-devstack` binary [default: env `MI_DEVSTACK_BIN`, else next to the running test
    /// executable's target directory, i.e. `target/debug/mi-devstack`].
    pub binary: Option<PathBuf>,
    /// Python with matrix-synapse [default: [`test_python`]].
    pub python: Option<PathBuf>,
    /// Working directory [default: a fresh temporary one, deleted on drop].
    pub dir: Option<PathBuf>,
    /// Ports [default: free ones picked at start].
    pub synapse_port: Option<u16>,
    pub token_port: Option<u16>,
    pub sfu_port: Option<u16>,
    pub sfu_udp_port: Option<u16>,
    /// Synapse's extra and the token service's address [default: 127.0.0.1] (`--http-bind`).
    pub http_bind: Option<IpAddr>,
    /// SFU bind address [default: 127.0.0.1] and advertised address [default: bind].
    pub sfu_bind: Option<IpAddr>,
    pub sfu_advertise: Option<IpAddr>,
    /// Helper binaries [default: next to the `mi-devstack` binary; skipped if missing].
    pub token_service: Option<PathBuf>,
    pub sfu: Option<PathBuf>,
    /// Also create the encrypted room.
    pub encrypted_room: bool,
    /// How long to wait for the stack file.
    pub timeout: Duration,
}

impl Default for DevStackOptions {
    fn default() -> Self {
        Self {
            binary: None,
            python: None,
            dir: None,
            synapse_port: None,
            token_port: None,
            sfu_port: None,
            sfu_udp_port: None,
            http_bind: None,
            sfu_bind: None,
            sfu_advertise: None,
            token_service: None,
            sfu: None,
            encrypted_room: false,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Starting the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("mi-devstack binary not found (looked at {looked}); build it with `cargo build -p mi-devstack -p mi-token-service -p mi-test-sfu` or set MI_DEVSTACK_BIN")]
    NoBinary { looked: String },
    #[error("no Python with matrix-synapse: {0}")]
    NoPython(String),
    #[error("cannot prepare the stack: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "mi-devstack exited ({status}) before writing {out}; last lines of its log:\n{log_tail}"
    )]
    Exited {
        status: ExitStatus,
        out: PathBuf,
        log_tail: String,
    },
    #[error("mi-devstack did not write {out} within {secs} s; last lines of its log:\n{log_tail}")]
    Timeout {
        out: PathBuf,
        secs: u64,
        log_tail: String,
    },
}

/// Entry point for tests.
pub struct DevStack;

/// A running dev stack; stopped (with everything it started) on drop.
pub struct DevStackHandle {
    /// The contents of the stack file.
    pub info: StackInfo,
    running: Running,
}

/// The `mi-devstack` child; stopped on drop (also when start-up fails half-way).
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    out: PathBuf,
    log: PathBuf,
    // Dropped after the child has stopped (field order), deleting the working directory.
    _temp: Option<tempfile::TempDir>,
}

fn find_binary(explicit: Option<PathBuf>) -> Result<PathBuf, StartError> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("MI_DEVSTACK_BIN").map(PathBuf::from)) {
        return if p.exists() {
            Ok(p)
        } else {
            Err(StartError::NoBinary {
                looked: p.display().to_string(),
            })
        };
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("mi-devstack"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| StartError::NoBinary {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Distinct free ports (all held while picking so none repeats).
fn free_ports() -> std::io::Result<(u16, u16, u16, u16)> {
    let tcp: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
    Ok((
        port(&tcp[0])?,
        port(&tcp[1])?,
        port(&tcp[2])?,
        udp.local_addr()?.port(),
    ))
}

impl DevStack {
    /// Runs `mi-devstack` and waits for its stack file (blocking, at most `opts.timeout`; from
    /// async code that must keep running meanwhile, call it through
    /// `tokio::task::spawn_blocking`).
    /// The stack stops when the handle is dropped, or when this process dies (the devstack
    /// runs with `--stop-on-stdin-eof` on a pipe held by the handle).
    pub fn start(opts: DevStackOptions) -> Result<DevStackHandle, StartError> {
        let binary = find_binary(opts.binary)?;
        let python = match opts.python {
            Some(p) => p,
            None => test_python()
                .map_err(StartError::NoPython)?
                .ok_or_else(|| {
                    StartError::NoPython("set MI_PYTHON or run scripts/setup.sh".into())
                })?,
        };
        let (temp, dir) = match opts.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new().prefix("mi-devstack-").tempdir()?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir)?;
        let (synapse, token, sfu, udp) = free_ports()?;
        let out = dir.join("stack.json");
        let log = dir.join(DEVSTACK_LOG);
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--dir")
            .arg(&dir)
            .arg("--python")
            .arg(&python)
            .arg("--out")
            .arg(&out)
            .arg("--stop-on-stdin-eof");
        for (flag, port) in [
            ("--synapse-port", opts.synapse_port.unwrap_or(synapse)),
            ("--token-port", opts.token_port.unwrap_or(token)),
            ("--sfu-port", opts.sfu_port.unwrap_or(sfu)),
            ("--sfu-udp-port", opts.sfu_udp_port.unwrap_or(udp)),
        ] {
            cmd.arg(flag).arg(port.to_string());
        }
        for (flag, ip) in [
            ("--http-bind", opts.http_bind),
            ("--sfu-bind", opts.sfu_bind),
            ("--sfu-advertise", opts.sfu_advertise),
        ] {
            if let Some(ip) = ip {
                cmd.arg(flag).arg(ip.to_string());
            }
        }
        for (flag, path) in [("--token-service", opts.token_service), ("--sfu", opts.sfu)] {
            if let Some(path) = path {
                cmd.arg(flag).arg(path);
            }
        }
        if opts.encrypted_room {
            cmd.arg("--encrypted-room");
        }
        cmd.stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let mut running = Running {
            child,
            stdin,
            out,
            log,
            _temp: temp,
        };
        let deadline = Instant::now() + opts.timeout;
        loop {
            if let Some(status) = running.child.try_wait()? {
                return Err(StartError::Exited {
                    status,
                    out: running.out.clone(),
                    log_tail: crate::process::tail(&running.log, 30),
                });
            }
            // The file is renamed into place, so it is either absent or complete.
            if let Ok(info) = StackInfo::read(&running.out) {
                if info.pids.devstack == running.child.id() {
                    return Ok(DevStackHandle { info, running });
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    out: running.out.clone(),
                    secs: opts.timeout.as_secs(),
                    log_tail: crate::process::tail(&running.log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl DevStackHandle {
    /// The devstack's own log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.running.log
    }

    /// The stack file.
    pub fn stack_file(&self) -> &Path {
        &self.running.out
    }

    /// Stops the stack by closing its stdin and waits (bounded) for it to exit; if it does not
    /// exit within 30 s it is sent SIGTERM, then SIGKILL. Returns the devstack's exit status
    /// (success when it stopped everything cleanly).
    pub fn stop(mut self) -> std::io::Result<ExitStatus> {
        self.running.shutdown()
    }
}

impl Running {
    fn shutdown(&mut self) -> std::io::Result<ExitStatus> {
        drop(self.stdin.take());
        if let Some(status) = self.wait_for(Duration::from_secs(30))? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_for(Duration::from_secs(15))? {
            return Ok(status);
        }
        self.child.kill()?;
        self.child.wait()
    }

    fn wait_for(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!(
                "mi-devstack handle: cannot stop pid {}: {e}",
                self.child.id()
            );
        }
    }
}
