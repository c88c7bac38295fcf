//! Test support shared by integration tests of this crate and of the device crate: a pair of
//! network namespaces joined by a veth link (libwebrtc gathers no candidates on loopback
//! alone), the SFU and Python-peer child processes, and the Python interpreter lookup.
//! Owns only what it creates (namespaces, children) and removes it on Drop. Needs root.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Errors while setting up test networking or processes.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("`{cmd}` failed: {stderr} (network namespaces need root and iproute2)")]
    Ip { cmd: String, stderr: String },
    #[error("cannot start {what}: {err}")]
    Spawn { what: String, err: std::io::Error },
    #[error("{0} did not report readiness within the deadline")]
    NotReady(String),
    #[error("entering namespace {ns}: {err}")]
    Setns { ns: String, err: std::io::Error },
}

fn ip(args: &[&str]) -> Result<(), TestkitError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| TestkitError::Spawn {
            what: "ip".into(),
            err,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Ip {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Two namespaces `lkt-sfu-<id>` (10.77.n.1/24) and `lkt-py-<id>` (10.77.n.2/24), each with `lo`
/// up and one end of a veth pair. Deleted on Drop.
pub struct NetnsPair {
    pub sfu_ns: String,
    pub py_ns: String,
    pub subnet: u8,
}

impl NetnsPair {
    /// Whether this process may create namespaces (root).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    pub fn new() -> Result<Self, TestkitError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let c = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 1_000_000;
        let id = format!("{pid}-{c}");
        let subnet = ((pid.wrapping_mul(7) + c) % 250 + 1) as u8;
        let pair = NetnsPair {
            sfu_ns: format!("lkt-sfu-{id}"),
            py_ns: format!("lkt-py-{id}"),
            subnet,
        };
        let (va, vb) = (format!("lk{pid}x{c}a"), format!("lk{pid}x{c}b"));
        ip(&["netns", "add", &pair.sfu_ns])?;
        ip(&["netns", "add", &pair.py_ns])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (dev, ns, host) in [(&va, &pair.sfu_ns, 1), (&vb, &pair.py_ns, 2)] {
            ip(&["link", "set", dev, "netns", ns])?;
            let addr = format!("10.77.{subnet}.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    pub fn sfu_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    pub fn py_ip(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    /// `ip netns exec <ns> <program>`: add args, then spawn.
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Abort every TCP connection in namespace `ns` going to `dst_ip:dst_port` (`ss -K`): the
    /// client sees its signalling connection vanish, without a LiveKit `leave`.
    pub fn kill_tcp(ns: &str, dst_ip: &str, dst_port: u16) -> Result<(), TestkitError> {
        let port = dst_port.to_string();
        ip(&[
            "netns", "exec", ns, "ss", "-K", "dst", dst_ip, "dport", "=", &port,
        ])
    }

    /// Run `f` on a thread that has entered namespace `ns` (for in-process HTTP/WS clients).
    pub fn run_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TestkitError> {
        let path = format!("/var/run/netns/{ns}");
        let ns_name = ns.to_string();
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|err| TestkitError::Setns {
                ns: ns_name.clone(),
                err,
            })?;
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(TestkitError::Setns {
                    ns: ns_name,
                    err: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        });
        handle.join().expect("namespace thread panicked")
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.sfu_ns]);
        let _ = ip(&["netns", "del", &self.py_ns]);
    }
}

/// The Python interpreter for SDK peers: `MI_PYTHON`, else the dev venv. `Ok(None)` = skip
/// (loudly); under `CI=true` a missing interpreter is an error.
pub fn python() -> Result<Option<PathBuf>, String> {
    if let Some(p) = std::env::var_os("MI_PYTHON") {
        return Ok(Some(PathBuf::from(p)));
    }
    let dev = PathBuf::from("/work/cache/venv/bin/python");
    if dev.exists() {
        return Ok(Some(dev));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(
            "MI_PYTHON is not set and CI=true: run scripts/setup.sh and set MI_PYTHON".into(),
        );
    }
    eprintln!("!!! SKIPPING: no Python with the livekit SDK (set MI_PYTHON) !!!");
    Ok(None)
}

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
        let mut cmd = match ns {
            Some(ns) => NetnsPair::command_in(ns, bin),
            None => Command::new(bin),
        };
        let any = format!("{ip_addr}:0");
        cmd.args(["--listen", &any, "--udp", &any, "--advertise", ip_addr])
            .args(["--key", key, "--secret", secret])
            .args(extra);
        let mut process = LineProcess::spawn("sfu", cmd)?;
        let line = process
            .wait_line(Duration::from_secs(20), |l| l.starts_with("listening on "))
            .ok_or_else(|| TestkitError::NotReady("mi-test-sfu".into()))?;
        let http = line.trim_start_matches("listening on ").to_string();
        Ok(Sfu { process, http })
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

/// A minimal blocking HTTP/1.1 request (for tests; run inside a namespace with
/// [`NetnsPair::run_in`] when needed). Returns (status, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
