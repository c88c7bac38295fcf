//! The media/IO loop: one task owning the room core, every participant's WebRTC sessions and the
//! single UDP socket. Signalling connections talk to it through [`Command`]s and receive
//! [`ConnMsg`]s. Owns the UDP socket and the demultiplexing (`Rtc::accepts`); must not parse
//! HTTP or touch WebSockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use str0m::media::{Direction, MediaData};
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::media::{NetPlan, Peer};
use crate::room::{Core, JoinError, JoinGrant, Out, Pid};

mod commands;

/// To a signalling connection.
#[derive(Debug)]
pub enum ConnMsg {
    Send(Box<proto::SignalResponse>),
    /// Send a normal close (1000) and stop.
    Close,
}

/// Room-service (Twirp) requests.
#[derive(Debug)]
pub enum Admin {
    /// Create (or return the existing) room of this name.
    CreateRoom(String, oneshot::Sender<proto::Room>),
    DeleteRoom(String, oneshot::Sender<bool>),
    ListParticipants(String, oneshot::Sender<Option<Vec<proto::ParticipantInfo>>>),
    ListRooms(Vec<String>, oneshot::Sender<Vec<proto::Room>>),
}

/// Identifies one signalling connection (a resume replaces the participant's connection).
pub type ConnId = u64;

/// To the engine.
#[derive(Debug)]
pub enum Command {
    /// Would a join into this room be accepted?
    CheckRoom(String, oneshot::Sender<Result<(), JoinError>>),
    /// Join: messages for the participant go to `tx` (JoinResponse first).
    Join {
        grant: JoinGrant,
        conn: ConnId,
        tx: mpsc::UnboundedSender<ConnMsg>,
        reply: oneshot::Sender<Result<Pid, JoinError>>,
    },
    /// Resume (`reconnect=1&sid=`): attach a new connection to a kept participant. `Err` =
    /// unknown participant (the caller answers STATE_MISMATCH).
    Resume {
        pid: Pid,
        grant: JoinGrant,
        conn: ConnId,
        tx: mpsc::UnboundedSender<ConnMsg>,
        reply: oneshot::Sender<Result<(), ()>>,
    },
    Signal(Pid, Box<Req>),
    /// The signalling connection ended without `leave`.
    Gone(Pid, ConnId),
    Admin(Admin),
    /// Tell everyone SERVER_SHUTDOWN and stop.
    Shutdown(oneshot::Sender<()>),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The engine state.
pub struct Engine {
    core: Core,
    peers: BTreeMap<Pid, Peer>,
    conns: BTreeMap<Pid, (ConnId, mpsc::UnboundedSender<ConnMsg>)>,
    socket: UdpSocket,
    plan: NetPlan,
    /// Participants whose signalling connection vanished, kept until the deadline for a resume.
    detached: BTreeMap<Pid, Instant>,
    /// ParticipantUpdates that happened while a participant was detached, sent on resume.
    missed: BTreeMap<Pid, Vec<proto::ParticipantInfo>>,
}

/// How long a participant whose signalling connection vanished is kept for a resume.
pub const RESUME_GRACE: Duration = Duration::from_secs(15);

enum PeerEvent {
    Active(Pid),
    MediaLine(Pid, String),
    Media(Pid, Box<MediaData>),
}

impl Engine {
    pub fn new(socket: UdpSocket, plan: NetPlan, auto_create: bool) -> Self {
        Engine {
            core: Core::new(auto_create),
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            socket,
            plan,
            detached: BTreeMap::new(),
            missed: BTreeMap::new(),
        }
    }

    /// Run until a `Shutdown` command (or every command sender is gone).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 2000];
        loop {
            let deadline = self.drive();
            let sleep = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                cmd = rx.recv() => {
                    match cmd {
                        Some(Command::Shutdown(done)) => {
                            let out = self.core.shutdown();
                            self.apply(out);
                            let _ = done.send(());
                            return;
                        }
                        Some(cmd) => self.command(cmd),
                        None => return,
                    }
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.udp(&buf[..n], source),
                    Err(e) => tracing::warn!("UDP receive failed: {e}"),
                },
                _ = sleep => {}
            }
        }
    }

    fn send(&mut self, pid: &str, msg: Resp) {
        if let Some((_, tx)) = self.conns.get(pid) {
            let _ = tx.send(ConnMsg::Send(Box::new(proto::SignalResponse {
                message: Some(msg),
            })));
        } else if let (true, Resp::Update(u)) = (self.detached.contains_key(pid), msg) {
            self.missed
                .entry(pid.to_string())
                .or_default()
                .extend(u.participants);
        }
    }

    /// Carry out room-core actions.
    fn apply(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Signal(pid, msg) => self.send(&pid, msg),
                Out::Close(pid) => {
                    if let Some((_, tx)) = self.conns.remove(&pid) {
                        let _ = tx.send(ConnMsg::Close);
                    }
                }
                Out::Subscribe {
                    subscriber,
                    publisher,
                    track,
                } => {
                    if let Some(p) = self.peers.get_mut(&subscriber) {
                        p.subscribe(track, publisher);
                    }
                    self.offer_if_due(&subscriber);
                }
                Out::DropMedia(pid) => {
                    if let Some(mut p) = self.peers.remove(&pid) {
                        p.close();
                    }
                    let others: Vec<Pid> = self.peers.keys().cloned().collect();
                    for other in others {
                        if let Some(p) = self.peers.get_mut(&other) {
                            p.drop_publisher(&pid);
                        }
                        self.offer_if_due(&other);
                    }
                }
            }
        }
    }

    fn offer_if_due(&mut self, pid: &str) {
        let Some(peer) = self.peers.get_mut(pid) else {
            return;
        };
        if let Some((offer, trickles)) = peer.next_subscriber_offer() {
            self.send(pid, Resp::Offer(offer));
            for t in trickles {
                self.send(pid, Resp::Trickle(t));
            }
        }
    }

    fn udp(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.plan.destination_for(source),
                contents,
            },
        );
        for peer in self.peers.values_mut() {
            for rtc in [&mut peer.publisher, &mut peer.subscriber] {
                if rtc.accepts(&input) {
                    if let Err(e) = rtc.handle_input(input) {
                        tracing::warn!("WebRTC input failed: {e}");
                    }
                    return;
                }
            }
        }
        tracing::trace!("no session accepts a datagram from {source}");
    }

    /// Advance every session: send datagrams, act on events, forward media (which makes new
    /// output, hence the bounded repeat). Returns the next deadline.
    fn drive(&mut self) -> Instant {
        let now = Instant::now();
        let expired: Vec<Pid> = self
            .detached
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for pid in expired {
            tracing::info!("{pid}: no resume within {RESUME_GRACE:?}, dropping");
            self.detached.remove(&pid);
            self.missed.remove(&pid);
            let out = self
                .core
                .participant_gone(&pid, proto::DisconnectReason::SignalClose);
            self.apply(out);
        }
        let now = Instant::now();
        for _ in 0..8 {
            let (next, events) = self.poll_all(now);
            if events.is_empty() {
                let next = self.detached.values().fold(next, |a, b| a.min(*b));
                return next.max(now + Duration::from_millis(1));
            }
            self.handle_events(events);
        }
        now + Duration::from_millis(1)
    }

    fn poll_all(&mut self, now: Instant) -> (Instant, Vec<PeerEvent>) {
        let mut next = now + Duration::from_millis(100);
        let mut events = Vec::new();
        for (pid, peer) in self.peers.iter_mut() {
            for (is_sub, rtc) in [(false, &mut peer.publisher), (true, &mut peer.subscriber)] {
                if !rtc.is_alive() {
                    continue;
                }
                if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                    tracing::warn!("{pid}: WebRTC timeout handling failed: {e}");
                    continue;
                }
                // Bounded: str0m yields a Timeout once it has nothing more to do.
                for _ in 0..10_000 {
                    match rtc.poll_output() {
                        Ok(Output::Timeout(t)) => {
                            next = next.min(t);
                            break;
                        }
                        Ok(Output::Transmit(t)) => {
                            if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                                tracing::debug!("UDP send to {} failed: {e}", t.destination);
                            }
                        }
                        Ok(Output::Event(e)) => match e {
                            Event::Connected if is_sub => {
                                events.push(PeerEvent::Active(pid.clone()))
                            }
                            Event::MediaAdded(m)
                                if !is_sub
                                    && matches!(
                                        m.direction,
                                        Direction::RecvOnly | Direction::SendRecv
                                    ) =>
                            {
                                events.push(PeerEvent::MediaLine(pid.clone(), m.mid.to_string()))
                            }
                            Event::MediaData(d) if !is_sub => {
                                events.push(PeerEvent::Media(pid.clone(), Box::new(d)))
                            }
                            Event::IceConnectionStateChange(s) => {
                                tracing::debug!(
                                    "{pid} {}: ICE {s:?}",
                                    if is_sub { "subscriber" } else { "publisher" }
                                )
                            }
                            _ => {}
                        },
                        Err(e) => {
                            tracing::warn!("{pid}: WebRTC session failed: {e}");
                            rtc.disconnect();
                            break;
                        }
                    }
                }
            }
        }
        (next, events)
    }

    fn handle_events(&mut self, events: Vec<PeerEvent>) {
        for ev in events {
            match ev {
                PeerEvent::Active(pid) => {
                    tracing::info!("{pid} is active");
                    let out = self.core.set_active(&pid);
                    self.apply(out);
                }
                PeerEvent::MediaLine(pid, mid) => {
                    let cid = self
                        .peers
                        .get(&pid)
                        .and_then(|p| crate::sdp::msid_track_of_mid(&p.last_publisher_offer, &mid));
                    let (track, out) = self.core.media_line_added(&pid, &mid, cid.as_deref());
                    if let Some(track) = track {
                        tracing::info!("{pid} publishes {track} on mid {mid}");
                    }
                    self.apply(out);
                }
                PeerEvent::Media(pid, data) => self.forward(&pid, &data),
            }
        }
    }

    /// Copy one Opus frame from `publisher` to every other ACTIVE participant subscribed to it.
    fn forward(&mut self, publisher: &str, data: &MediaData) {
        let Some(track) = self
            .core
            .track_of_mid(publisher, &data.mid.to_string())
            .map(str::to_string)
        else {
            return;
        };
        for (pid, peer) in self.peers.iter_mut() {
            if pid == publisher || !self.core.is_active(pid) {
                continue;
            }
            let Some(mid) = peer.out_mid(&track) else {
                continue;
            };
            let Some(writer) = peer.subscriber.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            let writer = match data.ext_vals.audio_level {
                Some(level) => {
                    writer.audio_level(level, data.ext_vals.voice_activity.unwrap_or(false))
                }
                None => writer,
            };
            if let Err(e) = writer.write(pt, data.network_time, data.time, data.data.clone()) {
                tracing::debug!("{pid}: forwarding failed: {e}");
            }
        }
    }
}
