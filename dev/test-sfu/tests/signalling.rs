//! Signalling-level behaviour with a raw WebSocket client on loopback: first messages, ping,
//! resume after a vanished connection, STATE_MISMATCH for unknown sids, and the drop after the
//! resume grace period.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use mi_test_sfu::testkit::Sfu;
use prost::Message as _;
use proto::signal_response::Message as Resp;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

async fn connect(sfu: &Sfu, token: &str, query: &str) -> Ws {
    let addr = sfu.http.trim_start_matches("http://");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/rtc?protocol=16&auto_subscribe=1{query}");
    let req = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(url)
        .header("Host", addr)
        .header("Authorization", format!("Bearer {token}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws
}

async fn next(ws: &mut Ws) -> Resp {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(25), ws.next())
            .await
            .expect("a signalling message in time")
            .expect("connection open")
            .unwrap();
        if let Message::Binary(b) = msg {
            return proto::SignalResponse::decode(&b[..])
                .unwrap()
                .message
                .unwrap();
        }
    }
}

async fn send(ws: &mut Ws, m: proto::signal_request::Message) {
    let req = proto::SignalRequest { message: Some(m) };
    ws.send(Message::Binary(req.encode_to_vec().into()))
        .await
        .unwrap();
}

fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .unwrap_or_else(|| panic!("no ufrag in {sdp}"))
        .to_string()
}

#[tokio::test]
async fn join_ping_resume_and_state_mismatch() {
    let sfu = Sfu::start(bin(), None, "127.0.0.1", KEY, SECRET, &[]).unwrap();
    let token = join_token("alice", "sig");
    let mut ws = connect(&sfu, &token, "").await;
    let Resp::Join(join) = next(&mut ws).await else {
        panic!("JoinResponse must come first")
    };
    let pid = join.participant.unwrap().sid;
    assert!(pid.starts_with("PA_"));
    assert!(join.subscriber_primary && join.fast_publish);
    assert_eq!((join.ping_interval, join.ping_timeout), (5, 15));
    let Resp::Offer(first) = next(&mut ws).await else {
        panic!("subscriber offer must follow the JoinResponse")
    };
    assert!(first.sdp.contains("m=application"));
    // Our candidates are trickled with sdpMid and sdpMLineIndex.
    let Resp::Trickle(t) = next(&mut ws).await else {
        panic!("trickle expected")
    };
    let init: serde_json::Value = serde_json::from_str(&t.candidate_init).unwrap();
    assert!(
        init["sdpMid"].is_string() && init["sdpMLineIndex"] == 0,
        "{init}"
    );
    assert!(init["candidate"].as_str().unwrap().contains("127.0.0.1"));

    send(
        &mut ws,
        proto::signal_request::Message::PingReq(proto::Ping {
            timestamp: 1234,
            rtt: 0,
        }),
    )
    .await;
    let Resp::PongResp(pong) = next(&mut ws).await else {
        panic!("pong expected")
    };
    assert_eq!(pong.last_ping_timestamp, 1234);

    // The connection vanishes; a resume within the grace period gets ReconnectResponse and an
    // ICE-restart subscriber offer.
    drop(ws);
    let mut ws = connect(&sfu, &token, &format!("&reconnect=1&sid={pid}")).await;
    assert!(matches!(next(&mut ws).await, Resp::Reconnect(_)));
    let offer = loop {
        if let Resp::Offer(o) = next(&mut ws).await {
            break o;
        }
    };
    assert_ne!(ufrag(&offer.sdp), ufrag(&first.sdp), "ICE restart");
    assert!(offer.id > first.id);

    // Unknown sid: full reconnect requested.
    let mut stray = connect(&sfu, &token, "&reconnect=1&sid=PA_unknown").await;
    let Resp::Leave(l) = next(&mut stray).await else {
        panic!("LeaveRequest expected")
    };
    assert_eq!(l.reason, proto::DisconnectReason::StateMismatch as i32);
    assert_eq!(l.action, proto::leave_request::Action::Reconnect as i32);
}

#[tokio::test]
async fn vanished_participant_is_dropped_after_the_grace_period() {
    let sfu = Sfu::start(bin(), None, "127.0.0.1", KEY, SECRET, &[]).unwrap();
    let mut watcher = connect(&sfu, &join_token("watcher", "g"), "").await;
    assert!(matches!(next(&mut watcher).await, Resp::Join(_)));
    let mut ghost = connect(&sfu, &join_token("ghost", "g"), "").await;
    assert!(matches!(next(&mut ghost).await, Resp::Join(_)));
    drop(ghost);
    let started = std::time::Instant::now();
    loop {
        if let Resp::Update(u) = next(&mut watcher).await {
            let p = &u.participants[0];
            if p.identity == "ghost"
                && p.state == proto::participant_info::State::Disconnected as i32
            {
                break;
            }
        }
    }
    // Kept for a resume first (LiveKit keeps ~15 s).
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
