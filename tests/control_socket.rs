//! The control socket as a kiosk UI, Home Assistant or a test drives it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Self {
        Self::start_with_boot_file(None)
    }

    /// With a provisioning file of that content on the "boot partition" (none if `None`).
    fn start_with_boot_file(boot: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let boot_file = dir.path().join("boot/matrix-intercom.toml");
        if let Some(text) = boot {
            std::fs::create_dir_all(boot_file.parent().unwrap()).unwrap();
            std::fs::write(&boot_file, text).unwrap();
        }
        let socket = dir.path().join("run/control.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r##"
[matrix]
homeserver = "http://127.0.0.1:9"
user_id = "@door:example.org"
room = "#door:example.org"
state_dir = "{state}"

[button]
enabled = false

[control]
socket = "{socket}"
"##,
                state = dir.path().join("state").display(),
                socket = socket.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
            .args(["run", "--config"])
            .arg(&config)
            .arg("--boot-file")
            .arg(&boot_file)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut daemon = Self {
            child,
            socket,
            _dir: dir,
        };
        daemon.wait_for_socket();
        daemon
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "daemon exited before opening its socket"
            );
            assert!(Instant::now() < deadline, "control socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ctl(&self, what: &str) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
            .args(["ctl", what, "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

fn raw_exchange(socket: &Path, line: &[u8]) -> serde_json::Value {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

#[test]
fn status_prints_one_json_object_with_the_state() {
    let daemon = Daemon::start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    let (ok, out) = daemon.ctl("status");
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["state", "room", "participants", "last_error", "uptime_s"] {
        assert!(status.get(key).is_some(), "status lacks {key}: {out}");
    }
    assert_eq!(status["room"], "#door:example.org");
    assert!(daemon.terminate().success(), "clean exit on SIGTERM");
}

#[test]
fn a_broken_provisioning_file_is_reported_while_the_daemon_runs_on() {
    let daemon = Daemon::start_with_boot_file(Some(
        "[matrix]\nhomeserver = \"https://matrix.example.org\"\nroom = 17\n",
    ));
    let (ok, out) = daemon.ctl("status");
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let problem = status["config_problem"].as_str().unwrap();
    assert!(problem.contains("not imported"), "{problem}");
    assert!(problem.contains("matrix-intercom.toml:3"), "{problem}");
    assert!(problem.contains("room"), "{problem}");
    // Running on the previous config (its room; its homeserver is unreachable here, so the
    // state may already be `error`: that is the previous config at work, not the broken file).
    assert_eq!(status["room"], "#door:example.org");
    assert!(daemon.terminate().success());
}

#[test]
fn a_good_or_missing_provisioning_file_is_no_problem() {
    let good = "[matrix]\nhomeserver = \"https://matrix.example.org\"\nuser_id = \"@door:example.org\"\nroom = \"#door:example.org\"\n";
    for daemon in [Daemon::start(), Daemon::start_with_boot_file(Some(good))] {
        let (_, out) = daemon.ctl("status");
        assert!(!out.contains("config_problem"), "{out}");
    }
}

#[test]
fn press_without_a_session_reports_what_to_do_and_keeps_running() {
    // No session and no password: joining cannot work, and status must say what to do.
    let daemon = Daemon::start();
    let (ok, _) = daemon.ctl("press");
    assert!(ok, "press accepted");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (_, out) = daemon.ctl("status");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let said_what_to_do = status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("matrix-intercom login"));
        if status["state"] == "error" && said_what_to_do {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "never reported the missing session as the error: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["connected"], false);
    assert!(daemon.ctl("status").0, "the daemon keeps running");
}

#[test]
fn garbage_gets_a_clear_error_and_the_daemon_keeps_running() {
    let daemon = Daemon::start();
    let reply = raw_exchange(&daemon.socket, b"\x00\xffnot json at all\n");
    assert_eq!(reply["ok"], false);
    let reply = raw_exchange(&daemon.socket, b"{\"cmd\":\"dance\"}\n");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("press, leave, status"),
        "{reply}"
    );
    let long = vec![b'x'; 10_000];
    let reply = raw_exchange(&daemon.socket, &[long.as_slice(), b"\n"].concat());
    assert_eq!(reply["ok"], false);
    // A client that connects and hangs up without a word.
    drop(UnixStream::connect(&daemon.socket).unwrap());
    let (ok, out) = daemon.ctl("status");
    assert!(ok, "daemon still answers after garbage");
    assert!(out.contains("\"state\""));
}

#[test]
fn ctl_without_daemon_says_what_is_wrong() {
    let out = Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
        .args(["ctl", "status", "--socket", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/control.sock") && err.contains("running"),
        "{err}"
    );
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser_id = \"@d:e.org\"\nroom = \"#d:e.org\"\nstate_dir = \"{}\"\n[button]\nenabled = false\n[control]\nsocket = \"{}\"\n",
            dir.path().display(),
            daemon.socket.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    assert!(daemon.ctl("status").0, "the first daemon is unaffected");
}
