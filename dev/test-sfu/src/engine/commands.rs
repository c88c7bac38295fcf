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
                // What happened while away (leavers included), then everyone present.
                let mut infos = self.missed.remove(&pid).unwrap_or_default();
                infos.extend(self.core.others(&pid));
                if !infos.is_empty() {
                    self.send(
                        &pid,
                        Resp::Update(proto::ParticipantUpdate {
                            participants: infos,
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

#[cfg(test)]
mod tests {
    use super::super::*;
    use tokio::sync::mpsc::UnboundedReceiver;

    fn grant(identity: &str) -> JoinGrant {
        JoinGrant {
            identity: identity.into(),
            name: identity.into(),
            room: "r".into(),
            metadata: String::new(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
        }
    }

    async fn join(
        tx: &mpsc::UnboundedSender<Command>,
        identity: &str,
        conn: ConnId,
    ) -> (Pid, UnboundedReceiver<ConnMsg>) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (rtx, rrx) = oneshot::channel();
        tx.send(Command::Join {
            grant: grant(identity),
            conn,
            tx: ctx,
            reply: rtx,
        })
        .unwrap();
        (rrx.await.unwrap().unwrap(), crx)
    }

    fn drain(rx: &mut UnboundedReceiver<ConnMsg>) -> Vec<Resp> {
        let mut v = Vec::new();
        while let Ok(ConnMsg::Send(m)) = rx.try_recv() {
            v.extend(m.message);
        }
        v
    }

    #[tokio::test]
    async fn resume_delivers_what_happened_while_away() {
        str0m::crypto::from_feature_flags().install_process_default();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let plan = NetPlan {
            local,
            advertise: vec![local.ip()],
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = tokio::spawn(Engine::new(socket, plan, true).run(rx));

        let (alice, _old) = join(&tx, "alice", 1).await;
        tx.send(Command::Gone(alice.clone(), 1)).unwrap();
        let (bob, _bob_rx) = join(&tx, "bob", 2).await;
        tx.send(Command::Signal(
            bob.clone(),
            Box::new(Req::Leave(proto::LeaveRequest::default())),
        ))
        .unwrap();
        // A late end of the replaced connection must not detach the resumed one.
        let (ctx, mut crx) = mpsc::unbounded_channel();
        let (rtx, rrx) = oneshot::channel();
        tx.send(Command::Resume {
            pid: alice.clone(),
            grant: grant("alice"),
            conn: 3,
            tx: ctx,
            reply: rtx,
        })
        .unwrap();
        rrx.await.unwrap().unwrap();
        tx.send(Command::Gone(alice.clone(), 1)).unwrap();
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(Command::Shutdown(done_tx)).unwrap();
        done_rx.await.unwrap();
        engine.await.unwrap();

        let msgs = drain(&mut crx);
        assert!(matches!(msgs[0], Resp::Reconnect(_)));
        let bob_gone = msgs.iter().any(|m| {
            matches!(m, Resp::Update(u) if u.participants.iter().any(|p| p.sid == bob
                && p.state == proto::participant_info::State::Disconnected as i32))
        });
        assert!(bob_gone, "{msgs:?}");
        assert!(msgs.iter().any(|m| matches!(m, Resp::Offer(_))));
        // Still attached: shutdown reached the resumed connection.
        assert!(msgs.iter().any(|m| matches!(m, Resp::Leave(l)
            if l.reason == proto::DisconnectReason::ServerShutdown as i32)));
    }
}
