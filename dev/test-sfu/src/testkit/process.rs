//! Child processes of tests: the SFU binary and Python SDK peers, with line capture.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{NetnsPair, TestkitError};

/// A child printing lines; lines are collected by a reader thread. Killed on Drop.
pub struct LineProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl LineProcess {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self, TestkitError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| TestkitError::Spawn {
                what: name.to_string(),
                err,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LineProcess {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// Wait (bounded) for a line satisfying `pred`; returns it.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("[{}] {line}", self.name);
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Wait (bounded) for a JSON line whose fields satisfy `pred`.
    pub fn wait_json(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.wait_line(timeout, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v))
        })
        .and_then(|l| serde_json::from_str(&l).ok())
    }

    /// The child's process id (for reading its `/proc/<pid>` figures while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the child's stdin (a command for a scripted peer); false once stdin
    /// is closed or the child is gone.
    pub fn send_line(&mut self, line: &str) -> bool {
        match self.stdin.as_mut() {
            Some(s) => writeln!(s, "{line}").and_then(|()| s.flush()).is_ok(),
            None => false,
        }
    }

    /// Close stdin (the Python peer then leaves and exits).
    pub fn close_stdin(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Wait (bounded) for exit; true if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `mi-test-sfu` binary for tests of other crates: env `MI_TEST_SFU_BIN`, else
/// `mi-test-sfu` next to the running test's `deps/` directory (build it first with
/// `cargo build -p mi-test-sfu`, same target dir). This crate's own tests use
/// `env!("CARGO_BIN_EXE_mi-test-sfu")`.
pub fn sfu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MI_TEST_SFU_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("mi-test-sfu");
    candidate.exists().then_some(candidate)
}

/// A running `mi-test-sfu` and its base URL.
pub struct Sfu {
    pub process: LineProcess,
    /// `http://IP:PORT`
    pub http: String,
    /// The bound media socket.
    pub udp: std::net::SocketAddr,
}

impl Sfu {
    /// Start `bin` (inside `ns` if given) with `--listen IP:0 --udp IP:0 --advertise IP`.
    pub fn start(
        bin: &Path,
        ns: Option<&str>,
        ip_addr: &str,
        key: &str,
        secret: &str,
        extra: &[&str],
    ) -> Result<Self, TestkitError> {
        Self::start_with(bin, ns, ip_addr, ip_addr, key, secret, extra)
    }

    /// Like [`Sfu::start`] but bound to `bind_ip` while advertising `advertise_ip`.
    pub fn start_with(
        bin: &Path,
        ns: Option<&str>,
        bind_ip: &str,
        advertise_ip: &str,
        key: &str,
        secret: &str,
        extra: &[&str],
    ) -> Result<Self, TestkitError> {
        let mut cmd = match ns {
            Some(ns) => NetnsPair::command_in(ns, bin),
            None => Command::new(bin),
        };
        let any = format!("{bind_ip}:0");
        cmd.args(["--listen", &any, "--udp", &any, "--advertise", advertise_ip])
            .args(["--key", key, "--secret", secret])
            .args(extra);
        let mut process = LineProcess::spawn("sfu", cmd)?;
        let line = process
            .wait_line(Duration::from_secs(20), |l| l.starts_with("listening on "))
            .ok_or_else(|| TestkitError::NotReady("mi-test-sfu".into()))?;
        let http = line.trim_start_matches("listening on ").to_string();
        let udp = process
            .wait_line(Duration::from_secs(1), |l| l.starts_with("media on udp://"))
            .and_then(|l| l.trim_start_matches("media on udp://").parse().ok())
            .ok_or_else(|| TestkitError::NotReady("mi-test-sfu (udp)".into()))?;
        Ok(Sfu { process, http, udp })
    }

    /// Port of the signalling listener.
    pub fn http_port(&self) -> u16 {
        self.http
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// `ws://IP:PORT`
    pub fn ws_url(&self) -> String {
        self.http.replacen("http://", "ws://", 1)
    }
}

/// What one Python SDK peer (`peer/lk_peer.py`) does.
#[derive(Debug, Clone)]
pub struct PeerSpec<'a> {
    /// Label for its output lines.
    pub name: &'a str,
    /// `ws://…` of the SFU.
    pub url: &'a str,
    pub token: &'a str,
    /// Frequency of the sine it publishes.
    pub tone_hz: u32,
    /// Frequency its detector reports on.
    pub expect_hz: u32,
    /// It leaves after this long (or on stdin EOF).
    pub duration_s: u32,
}

/// Start the Python SDK peer inside namespace `ns`.
pub fn start_peer(python: &Path, ns: &str, spec: &PeerSpec) -> Result<LineProcess, TestkitError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/lk_peer.py");
    let mut cmd = NetnsPair::command_in(ns, python);
    cmd.arg(script).args([
        spec.url,
        spec.token,
        &spec.tone_hz.to_string(),
        &spec.expect_hz.to_string(),
        &spec.duration_s.to_string(),
    ]);
    LineProcess::spawn(spec.name, cmd)
}
