//! Child processes of the dev stack (Synapse, token service, SFU): spawning each in its own
//! process group with a parent-death signal, forwarding or capturing its output, noticing its
//! exit, and stopping whole groups (SIGTERM, then SIGKILL after a grace period). Owns process
//! lifetime only; it knows nothing about what the children do.
//!
//! Children get `PR_SET_PDEATHSIG = SIGTERM`: if `mi-devstack` dies (even by SIGKILL) they are
//! told to stop too. Linux sends that signal when the *thread* that spawned the child ends, so
//! spawn only from a thread that lives as long as the stack (the main thread).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// How a child's output is handled.
pub enum Output<'a> {
    /// stdout and stderr appended to this file.
    File(&'a Path),
    /// Each line copied to our stderr as `[name] line`; the first line containing `ready_marker`
    /// is reported through [`Started::ready`].
    Forward { ready_marker: &'static str },
}

/// A running child.
pub struct Managed {
    pub name: &'static str,
    pub pid: u32,
    status: Arc<Mutex<Option<ExitStatus>>>,
}

impl Managed {
    /// The exit status, once the child has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Returned by [`spawn`].
pub struct Started {
    pub child: Managed,
    /// Resolves with the ready line (only for [`Output::Forward`]); dropped without a value if the
    /// output ends first.
    pub ready: Option<oneshot::Receiver<String>>,
}

/// Sent on the exit channel when a child exits: its name and status.
pub type ExitEvent = (&'static str, ExitStatus);

/// Spawns `cmd` in a new process group; its exit is reported on `exits`.
pub fn spawn(
    name: &'static str,
    mut cmd: Command,
    output: Output<'_>,
    exits: mpsc::UnboundedSender<ExitEvent>,
) -> std::io::Result<Started> {
    let parent = std::process::id();
    cmd.stdin(Stdio::null()).process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let mut ready = None;
    match output {
        Output::File(path) => {
            let file = File::options().create(true).append(true).open(path)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        Output::Forward { .. } => {
            // The lines end up in a terminal or a log file after our prefix: no colour codes.
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .env("NO_COLOR", "1");
        }
    }
    let mut child = cmd.spawn()?;
    if let Output::Forward { ready_marker } = output {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        if let Some(out) = child.stdout.take() {
            forward(name, out, ready_marker, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(name, err, ready_marker, tx);
        }
        ready = Some(rx);
    }
    let pid = child.id();
    eprintln!("mi-devstack: started {name} (pid {pid})");
    let status = Arc::new(Mutex::new(None));
    let status_w = status.clone();
    std::thread::Builder::new()
        .name(format!("wait-{name}"))
        .spawn(move || {
            if let Ok(s) = child.wait() {
                *status_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                let _ = exits.send((name, s));
            }
        })?;
    Ok(Started {
        child: Managed { name, pid, status },
        ready,
    })
}

type ReadySender = Arc<Mutex<Option<oneshot::Sender<String>>>>;

fn forward(
    name: &'static str,
    stream: impl Read + Send + 'static,
    marker: &'static str,
    tx: ReadySender,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("out-{name}"))
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
                if line.contains(marker) {
                    if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("mi-devstack: cannot forward the output of {name}: {e}");
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read), for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Describes an exit status for people.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Stops the given children: SIGTERM to each process group, wait up to `grace` for all to exit,
/// then SIGKILL the groups of those still running and wait briefly for them to be reaped.
pub fn stop_all(children: &[Managed], grace: Duration) {
    for child in children.iter().rev() {
        if child.exit_status().is_none() {
            signal_group(child.pid, libc::SIGTERM);
        }
    }
    if !wait_all(children, grace) {
        for child in children.iter().filter(|c| c.exit_status().is_none()) {
            eprintln!(
                "mi-devstack: {} (pid {}) ignored SIGTERM for {} s, killing it",
                child.name,
                child.pid,
                grace.as_secs()
            );
            signal_group(child.pid, libc::SIGKILL);
        }
        wait_all(children, Duration::from_secs(5));
    }
    // Anything left in the groups (grandchildren) goes too.
    for child in children {
        signal_group(child.pid, libc::SIGKILL);
    }
}

fn wait_all(children: &[Managed], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if children.iter().all(|c| c.exit_status().is_some()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill has no memory-safety preconditions; a negative pid names a process group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_all_ends_the_whole_process_group() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cmd = Command::new("sh");
        // A grandchild that would survive if only the direct child were killed.
        cmd.args(["-c", "sleep 300 & echo ready; wait"]);
        let started = spawn(
            "sh",
            cmd,
            Output::Forward {
                ready_marker: "ready",
            },
            tx,
        )
        .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(10), started.ready.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line, "ready");
        let pgid = started.child.pid;
        stop_all(std::slice::from_ref(&started.child), Duration::from_secs(5));
        let (name, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(name, "sh");
        // No process of the group is left: signal 0 to the group fails with ESRCH.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks for existence.
        while unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0 {
            assert!(Instant::now() < deadline, "process group {pgid} survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
