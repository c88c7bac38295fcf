//! How the dev stack runs the token service and the SFU: their command lines carry the stack's
//! URLs and LiveKit key pair, they are waited for (`listening on`), and stopped with the stack.
//! Stand-in helpers (shell scripts that record their arguments) replace the real binaries, whose
//! own behaviour is tested in their crates. Needs a Python with matrix-synapse (see stack.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mi_devstack::{DevStack, DevStackOptions, StartError};

/// A helper script that writes its arguments (one per line, then `env LIVEKIT_SECRET=…`) to
/// `<path>.args`, then runs `body`.
fn fake_helper(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let record = "printf '%s\\n' \"$@\" \"env LIVEKIT_SECRET=$LIVEKIT_SECRET\" > \"$0.args\"";
    std::fs::write(&path, format!("#!/bin/sh\n{record}\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn args_of(script: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(script.with_extension("args")).unwrap();
    text.lines().map(str::to_owned).collect()
}

/// The value following `flag`.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing in {args:?}"));
    &args[i + 1]
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn helpers_get_the_stack_urls_and_key_pair_and_stop_with_the_stack() {
    let Some(python) = mi_devstack::test_python_or_skip("helpers_get_the_stack_urls") else {
        return;
    };
    let bin = tempfile::tempdir().unwrap();
    let ready = "echo \"listening on http://$2\"\nexec sleep 600";
    let token = fake_helper(bin.path(), "token", ready);
    let sfu = fake_helper(bin.path(), "sfu", ready);
    let stack = DevStack::start(DevStackOptions {
        binary: Some(env!("CARGO_BIN_EXE_mi-devstack").into()),
        python: Some(python),
        token_service: Some(token.clone()),
        sfu: Some(sfu.clone()),
        ..DevStackOptions::default()
    })
    .expect("stack starts");
    let info = stack.info.clone();
    let (token_pid, sfu_pid) = (info.pids.token_service.unwrap(), info.pids.sfu.unwrap());
    assert!(alive(token_pid) && alive(sfu_pid));

    let t = args_of(&token);
    assert_eq!(
        format!("http://{}", arg(&t, "--listen")),
        info.token_service_url
    );
    assert_eq!(arg(&t, "--livekit-url"), info.livekit.url);
    assert_eq!(arg(&t, "--livekit-key"), info.livekit.key);
    // The token service gets the secret in its environment, not on its command line.
    let env_line = format!("env LIVEKIT_SECRET={}", info.livekit.secret.expose());
    assert_eq!(t.last(), Some(&env_line));
    assert_eq!(
        t.iter()
            .filter(|a| a.contains(info.livekit.secret.expose()))
            .count(),
        1
    );
    assert_eq!(
        arg(&t, "--homeserver"),
        format!("localhost={}", info.homeserver_url)
    );
    assert_eq!(arg(&t, "--sfu-admin-url"), info.sfu_admin_url);
    assert!(t.iter().any(|a| a == "--allow-insecure-loopback"));

    let s = args_of(&sfu);
    let sfu_port = info.livekit.url.rsplit(':').next().unwrap().to_owned();
    assert_eq!(arg(&s, "--listen"), format!("127.0.0.1:{sfu_port}"));
    assert_eq!(info.sfu_admin_url, format!("http://127.0.0.1:{sfu_port}"));
    assert!(arg(&s, "--udp").starts_with("127.0.0.1:"));
    assert_eq!(arg(&s, "--advertise"), "127.0.0.1");
    assert_eq!(arg(&s, "--key"), info.livekit.key);
    assert_eq!(arg(&s, "--secret"), info.livekit.secret.expose());
    assert!(
        info.livekit.secret.expose().len() >= 32,
        "LiveKit wants secrets of 32+ characters"
    );

    assert!(stack.stop().unwrap().success());
    for pid in [token_pid, sfu_pid, info.pids.synapse] {
        wait_gone(pid);
    }
}

#[test]
fn a_helper_that_dies_at_start_fails_the_start_and_leaves_nothing_running() {
    let Some(python) = mi_devstack::test_python_or_skip("a_helper_that_dies") else {
        return;
    };
    let bin = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = fake_helper(
        bin.path(),
        "token",
        "echo 'cannot start: no coffee' >&2\nexit 3",
    );
    let missing_sfu = bin.path().join("no-such-sfu");
    let err = DevStack::start(DevStackOptions {
        binary: Some(env!("CARGO_BIN_EXE_mi-devstack").into()),
        python: Some(python),
        dir: Some(dir.path().to_owned()),
        token_service: Some(token),
        sfu: Some(missing_sfu),
        ..DevStackOptions::default()
    })
    .err()
    .expect("start must fail");
    let text = err.to_string();
    assert!(matches!(err, StartError::Exited { .. }), "{text}");
    assert!(
        text.contains("[token-service] cannot start: no coffee"),
        "{text}"
    );
    assert!(
        text.contains("token-service closed its output before printing 'listening on'"),
        "{text}"
    );
    assert!(text.contains("mi-test-sfu not found"), "{text}");
    // Synapse had been started: it is gone too.
    let log = std::fs::read_to_string(dir.path().join(mi_devstack::handle::DEVSTACK_LOG)).unwrap();
    let pid: u32 = log
        .split("started synapse (pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no synapse pid in {log}"));
    wait_gone(pid);
}
