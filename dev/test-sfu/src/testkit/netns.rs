//! Network namespaces for tests: create, enter, run commands in, abort TCP inside, delete.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::TestkitError;

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
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            enter_ns(&ns)?;
            Ok(f())
        });
        handle.join().expect("namespace thread panicked")
    }
}

/// Enter namespace `ns` on the current thread.
pub(super) fn enter_ns(ns: &str) -> Result<(), TestkitError> {
    use std::os::fd::AsRawFd;
    let file =
        std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|err| TestkitError::Setns {
            ns: ns.to_string(),
            err,
        })?;
    // SAFETY: a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(TestkitError::Setns {
            ns: ns.to_string(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.sfu_ns]);
        let _ = ip(&["netns", "del", &self.py_ns]);
    }
}
