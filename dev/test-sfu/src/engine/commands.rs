//! Signalling, join/resume and room-service commands handled by the engine.

use std::time::Instant;

use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

use super::{now_ms, Admin, Command, ConnMsg, Engine, RESUME_GRACE};
use crate::media::Peer;

impl Engine {
    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::CheckRoom(room, reply) => {
                let _ = reply.send(self.core.check_room(&room));
            }
            Command::Join {
                grant,
                conn,
                tx,
                reply,
            } => match self.core.join(&grant, now_ms()) {
                Ok((pid, join, out)) => {
                    let _ = tx.send(ConnMsg::Send(Box::new(proto::SignalResponse {
                        message: Some(Resp::Join(join)),
                    })));
                    self.conns.insert(pid.clone(), (conn, tx));
                    self.peers
                        .insert(pid.clone(), Peer::new(self.plan.clone(), Instant::now()));
                    tracing::info!("{} joined {} as {pid}", grant.identity, grant.room);
                    self.apply(out);
                    // The subscriber offer follows the JoinResponse at once (subscriber primary).
                    self.offer_if_due(&pid);
                    let _ = reply.send(Ok(pid));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Signal(pid, req) => self.signal(&pid, *req),
            Command::Gone(pid, conn) => {
                // Ignore the end of a connection a resume already replaced.
                if self.core.contains(&pid) && self.conns.get(&pid).is_none_or(|(c, _)| *c == conn)
                {
                    tracing::info!("{pid}: signalling connection lost, kept for a resume");
                    self.conns.remove(&pid);
                    self.detached.insert(pid, Instant::now() + RESUME_GRACE);
                }
            }
            Command::Resume {
                pid,
                grant,
                conn,
                tx,
                reply,
            } => {
                if !self.core.is_member(&pid, &grant.identity, &grant.room) {
                    let _ = reply.send(Err(()));
                    return;
                }
                tracing::info!("{pid} resumes");
                self.detached.remove(&pid);
                if let Some((_, old)) = self.conns.insert(pid.clone(), (conn, tx)) {
                    let _ = old.send(ConnMsg::Close);
                }
                self.send(
                    &pid,
                    Resp::Reconnect(proto::ReconnectResponse {
                        server_info: Some(crate::room::server_info()),
                        ..Default::default()
                    }),
                );
                let others = self.core.others(&pid);
                if !others.is_empty() {
                    self.send(
                        &pid,
                        Resp::Update(proto::ParticipantUpdate {
                            participants: others,
                        }),
                    );
                }
                if let Some(peer) = self.peers.get_mut(&pid) {
                    peer.restart_ice();
                }
                self.offer_if_due(&pid);
                let _ = reply.send(Ok(()));
            }
            Command::Admin(a) => self.admin(a),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn admin(&mut self, a: Admin) {
        match a {
            Admin::CreateRoom(name, reply) => {
                let room = self.core.create_room(&name, now_ms());
                let _ = reply.send(room);
            }
            Admin::DeleteRoom(name, reply) => {
                let out = self.core.delete_room(&name);
                let found = out.is_some();
                self.apply(out.unwrap_or_default());
                let _ = reply.send(found);
            }
            Admin::ListParticipants(room, reply) => {
                let _ = reply.send(self.core.list_participants(&room));
            }
            Admin::ListRooms(names, reply) => {
                let _ = reply.send(self.core.list_rooms(&names));
            }
        }
    }

    fn signal(&mut self, pid: &str, req: Req) {
        if !self.core.contains(pid) {
            return;
        }
        match req {
            Req::PingReq(p) => self.send(
                pid,
                Resp::PongResp(proto::Pong {
                    last_ping_timestamp: p.timestamp,
                    timestamp: now_ms(),
                }),
            ),
            Req::Ping(_) => self.send(pid, Resp::Pong(now_ms())),
            Req::Offer(offer) => {
                let Some(peer) = self.peers.get_mut(pid) else {
                    return;
                };
                match peer.answer_publisher(&offer) {
                    Ok((answer, trickles)) => {
                        self.send(pid, Resp::Answer(answer));
                        for t in trickles {
                            self.send(pid, Resp::Trickle(t));
                        }
                    }
                    Err(e) => tracing::warn!("{pid}: publisher offer refused: {e}"),
                }
            }
            Req::Answer(answer) => {
                if let Some(peer) = self.peers.get_mut(pid) {
                    if let Err(e) = peer.subscriber_answer(&answer) {
                        tracing::warn!("{pid}: subscriber answer refused: {e}");
                    }
                }
                self.offer_if_due(pid);
            }
            Req::Trickle(t) => {
                if let Some(peer) = self.peers.get_mut(pid) {
                    peer.remote_candidate(&t);
                }
            }
            Req::AddTrack(t) => {
                let out = self.core.add_track(pid, &t);
                self.apply(out);
            }
            Req::Mute(m) => {
                let out = self.core.mute(pid, &m.sid, m.muted);
                self.apply(out);
            }
            Req::Leave(_) => {
                let out = self
                    .core
                    .participant_gone(pid, proto::DisconnectReason::ClientInitiated);
                self.apply(out);
            }
            other => tracing::debug!("{pid}: ignoring {other:?}"),
        }
    }
}
