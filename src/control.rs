//! The local control socket: `matrix-intercom ctl press|leave|status`.
//!
//! Owns the unix socket (mode 0660) and its line protocol; must not decide anything about calls:
//! commands are handed to the daemon, which answers. Protocol: one request per line, either a bare
//! word (`press`, `leave`, `status`) or JSON (`{"cmd":"press"}`); one JSON reply per line,
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`. A client that sends garbage gets an error
//! reply and the daemon carries on.

use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Longest request line accepted; longer input is garbage.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Press,
    Leave,
    Status,
}

impl Command {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            cmd: Command,
        }
        let line = line.trim();
        match line {
            "press" => return Ok(Command::Press),
            "leave" => return Ok(Command::Leave),
            "status" => return Ok(Command::Status),
            _ => {}
        }
        serde_json::from_str::<Req>(line)
            .map(|r| r.cmd)
            .map_err(|_| {
                let shown: String = line.chars().take(40).collect();
                format!(
                    "not a command: {shown:?}; send one per line: press, leave, status (or {{\"cmd\":\"status\"}})"
                )
            })
    }
}

/// What `ctl status` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    /// Logged in and syncing with the homeserver.
    pub connected: bool,
    pub room: String,
    pub participants: Vec<String>,
    pub last_error: Option<String>,
    /// A provisioning file that could not be imported (the device runs on its previous config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_problem: Option<String>,
    pub uptime_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_duration_s: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another matrix-intercom is already listening there; stop it or set [control] socket to another path", .0.display())]
    InUse(PathBuf),
    #[error("control socket {}: {}; check that the directory exists and is writable by the service user", .0.display(), .1)]
    Bind(PathBuf, io::Error),
    #[error("cannot reach the daemon at {}: {}; is `matrix-intercom run` running with this [control] socket?", .0.display(), .1)]
    Connect(PathBuf, io::Error),
    #[error("daemon at {} answered: {}", .0.display(), .1)]
    Refused(PathBuf, String),
    #[error("daemon at {} closed the connection without an answer", .0.display())]
    NoAnswer(PathBuf),
}

/// A press or leave from the socket, handed to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Press,
    Leave,
}

/// The listening side. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` (mode 0660, parent created) and serves clients: presses and leaves go to
    /// `requests` (the reply waits until the daemon took it), status is read from `status`.
    pub async fn bind(
        path: &Path,
        requests: mpsc::Sender<(Request, oneshot::Sender<()>)>,
        status: watch::Receiver<Status>,
    ) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ControlError::Bind(path.into(), e))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.into()));
            }
            // A stale socket from a previous run that died.
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| ControlError::Bind(path.into(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| ControlError::Bind(path.into(), e))?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_client(stream, requests.clone(), status.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self {
            path: path.into(),
            task,
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<()>)>,
    status: watch::Receiver<Status>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(1 << 20)).split(b'\n');
    while let Ok(Some(raw)) = lines.next_segment().await {
        let reply = if raw.len() > MAX_LINE {
            error_reply(format!(
                "request line too long ({} bytes, at most {MAX_LINE})",
                raw.len()
            ))
        } else {
            match std::str::from_utf8(&raw)
                .map_err(|_| "not UTF-8 text; send press, leave or status".to_string())
                .and_then(Command::parse)
            {
                Ok(Command::Status) => Reply {
                    ok: true,
                    error: None,
                    status: Some(status.borrow().clone()),
                },
                Ok(cmd) => {
                    let req = if cmd == Command::Press {
                        Request::Press
                    } else {
                        Request::Leave
                    };
                    let (tx, rx) = oneshot::channel();
                    if requests.send((req, tx)).await.is_err() || rx.await.is_err() {
                        error_reply("the daemon is shutting down".into())
                    } else {
                        Reply {
                            ok: true,
                            error: None,
                            status: None,
                        }
                    }
                }
                Err(e) => error_reply(e),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn error_reply(error: String) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        status: None,
    }
}

/// Client side: sends one command and returns the daemon's reply.
pub async fn send(path: &Path, cmd: Command) -> Result<Reply, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| ControlError::Connect(path.into(), e))?;
    let (read, mut write) = stream.into_split();
    let line = format!("{}\n", serde_json::json!({ "cmd": cmd }));
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| ControlError::Connect(path.into(), e))?;
    let mut reply = String::new();
    BufReader::new(read)
        .read_line(&mut reply)
        .await
        .map_err(|e| ControlError::Connect(path.into(), e))?;
    if reply.is_empty() {
        return Err(ControlError::NoAnswer(path.into()));
    }
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| ControlError::Refused(path.into(), format!("unreadable reply: {e}")))?;
    if !reply.ok {
        return Err(ControlError::Refused(
            path.into(),
            reply.error.unwrap_or_default(),
        ));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_and_json() {
        assert_eq!(Command::parse("press\n"), Ok(Command::Press));
        assert_eq!(Command::parse(r#"{"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(Command::parse(r#" {"cmd": "leave"} "#), Ok(Command::Leave));
        let err = Command::parse(r#"{"cmd":"explode"}"#).unwrap_err();
        assert!(err.contains("press, leave, status"), "{err}");
        assert!(Command::parse(r#"{"cmd":"press","x":1}"#).is_err());
    }
}
