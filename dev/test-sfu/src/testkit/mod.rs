//! Test support shared by integration tests of this crate and of the device crate: a pair of
//! network namespaces joined by a veth link (libwebrtc gathers no candidates on loopback
//! alone), a QEMU-like loopback relay, the SFU and Python-peer child processes, and the Python
//! interpreter lookup. Owns only what it creates (namespaces, children, threads) and removes it
//! on Drop. Needs root for namespaces.

mod netns;
mod process;
mod relay;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use netns::NetnsPair;
pub use process::{sfu_binary, start_peer, LineProcess, PeerSpec, Sfu};
pub use relay::LoopbackRelay;

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
