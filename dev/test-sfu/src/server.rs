//! The signalling port: HTTP routing (`/rtc`, `/rtc/validate`, `/rtc/v1*`, Twirp room service)
//! and the WebSocket session of each participant. Owns TCP connections; must not touch media.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::{Auth, AuthError};
use crate::engine::{Admin, Command, ConnMsg};
use crate::http::{read_request, respond, Request};
use crate::room::JoinError;

/// How long a client may take to send its request.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared by every connection task.
pub struct Shared {
    pub auth: Auth,
    pub engine: mpsc::UnboundedSender<Command>,
    /// Open WebSocket sessions (for a bounded wait at shutdown).
    pub sessions: AtomicUsize,
    pub sessions_changed: Notify,
}

/// Accept connections until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, shared).await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn text(stream: &mut BufReader<TcpStream>, status: u16, body: &str) -> anyhow::Result<()> {
    respond(
        stream.get_mut(),
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
    .await?;
    Ok(())
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut stream = BufReader::new(stream);
    let req = match tokio::time::timeout(HEAD_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return text(&mut stream, 400, &e.to_string()).await,
        Err(_) => return text(&mut stream, 408, "request not received in time").await,
    };
    match req.path.trim_end_matches('/') {
        "/rtc/v1" | "/rtc/v1/validate" => {
            text(
                &mut stream,
                404,
                "single peer connection (v1) is not supported",
            )
            .await
        }
        "/rtc/validate" => match validate(&req, &shared).await {
            Ok(()) => text(&mut stream, 200, "success").await,
            Err((status, msg)) => text(&mut stream, status, &msg).await,
        },
        "/rtc" => {
            if !req.is_websocket_upgrade() {
                return text(&mut stream, 404, "expected a WebSocket upgrade").await;
            }
            if let Err((status, msg)) = validate(&req, &shared).await {
                return text(&mut stream, status, &msg).await;
            }
            rtc_session(stream, req, shared).await
        }
        p if p.starts_with("/twirp/livekit.RoomService/") => {
            let (status, ctype, body) = crate::twirp::handle(&req, &p[27..], &shared).await;
            respond(stream.get_mut(), status, ctype, &body).await?;
            Ok(())
        }
        _ => text(&mut stream, 404, "not found").await,
    }
}

/// Token and room checks shared by `/rtc/validate` and `/rtc`, before any upgrade.
async fn validate(req: &Request, shared: &Shared) -> Result<(), (u16, String)> {
    let grant = shared
        .auth
        .join_grant(req.token(), req.query("room"))
        .map_err(|e: AuthError| (e.status(), e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let _ = shared.engine.send(Command::CheckRoom(grant.room, tx));
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ JoinError::RoomNotFound)) => Err((404, e.to_string())),
        Err(_) => Err((503, "server is shutting down".into())),
    }
}

fn handshake_response(req: &Request) -> Option<String> {
    let key = req.header("sec-websocket-key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

struct SessionGuard(Arc<Shared>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        self.0.sessions_changed.notify_waiters();
    }
}

async fn rtc_session(
    mut stream: BufReader<TcpStream>,
    req: Request,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let grant = shared
        .auth
        .join_grant(req.token(), req.query("room"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(head) = handshake_response(&req) else {
        return text(&mut stream, 400, "missing Sec-WebSocket-Key").await;
    };
    let (tx, mut out_rx) = mpsc::unbounded_channel();
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    let conn = NEXT_CONN.fetch_add(1, Ordering::SeqCst);
    let resume = req
        .query("reconnect")
        .is_some_and(|v| v == "1" || v == "true");
    let pid = if resume {
        let pid = req.query("sid").unwrap_or_default().to_string();
        let (reply_tx, reply_rx) = oneshot::channel();
        let _ = shared.engine.send(Command::Resume {
            pid: pid.clone(),
            grant,
            conn,
            tx,
            reply: reply_tx,
        });
        match reply_rx.await {
            Ok(Ok(())) => pid,
            Ok(Err(())) => return state_mismatch(stream, &head).await,
            Err(_) => return text(&mut stream, 503, "server is shutting down").await,
        }
    } else {
        let (reply_tx, reply_rx) = oneshot::channel();
        let _ = shared.engine.send(Command::Join {
            grant,
            conn,
            tx,
            reply: reply_tx,
        });
        match reply_rx.await {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => return text(&mut stream, 404, &e.to_string()).await,
            Err(_) => return text(&mut stream, 503, "server is shutting down").await,
        }
    };
    shared.sessions.fetch_add(1, Ordering::SeqCst);
    let _guard = SessionGuard(shared.clone());
    stream.get_mut().write_all(head.as_bytes()).await?;
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let mut left = false;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => match proto::SignalRequest::decode(&b[..]) {
                    Ok(proto::SignalRequest { message: Some(m) }) => {
                        if matches!(m, proto::signal_request::Message::Leave(_)) {
                            left = true;
                        }
                        let _ = shared.engine.send(Command::Signal(pid.clone(), Box::new(m)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("{pid}: undecodable signal request: {e}"),
                },
                Some(Ok(Message::Text(_))) => tracing::debug!("{pid}: JSON signalling is not supported"),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = out_rx.recv() => match out {
                Some(ConnMsg::Send(resp)) => {
                    if ws.send(Message::Binary(resp.encode_to_vec().into())).await.is_err() {
                        break;
                    }
                }
                Some(ConnMsg::Close) | None => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
                    // Let the close handshake finish, bounded.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    }).await;
                    return Ok(());
                }
            },
        }
    }
    if !left {
        let _ = shared.engine.send(Command::Gone(pid, conn));
    }
    Ok(())
}

/// Unknown participant on resume: `LeaveRequest{STATE_MISMATCH, RECONNECT}` (full re-join).
async fn state_mismatch(mut stream: BufReader<TcpStream>, head: &str) -> anyhow::Result<()> {
    stream.get_mut().write_all(head.as_bytes()).await?;
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let leave = proto::SignalResponse {
        message: Some(proto::signal_response::Message::Leave(
            proto::LeaveRequest {
                can_reconnect: true,
                reason: proto::DisconnectReason::StateMismatch as i32,
                action: proto::leave_request::Action::Reconnect as i32,
                regions: None,
            },
        )),
    };
    ws.send(Message::Binary(leave.encode_to_vec().into()))
        .await?;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await?;
    Ok(())
}

/// Send an admin request to the engine and wait for its answer.
pub async fn admin<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> Admin,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    shared.engine.send(Command::Admin(make(tx))).ok()?;
    rx.await.ok()
}
