//! Room core (sans-IO): rooms, participants, published tracks and who must hear what.
//!
//! Owns the LiveKit-visible state (sids, participant states, TrackInfos) and decides which
//! signalling messages go to whom. It must not touch sockets, clocks of its own, or WebRTC
//! sessions: callers feed it events and carry out the returned [`Out`] actions.

use std::collections::BTreeMap;

use livekit_protocol as proto;
use proto::participant_info::State;
use proto::signal_response::Message as Resp;

/// A participant sid (`PA_…`).
pub type Pid = String;

/// What a verified access token allows a joining participant.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    pub identity: String,
    pub name: String,
    pub room: String,
    pub metadata: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
}

/// Why a join was refused (mapped to HTTP statuses by the caller).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("requested room does not exist (create it with CreateRoom first)")]
    RoomNotFound,
}

/// An action the IO layer must carry out, in order.
// Short-lived and moved once; boxing every signalling message buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Out {
    /// Send a signalling message to one participant.
    Signal(Pid, Resp),
    /// Close the participant's signalling connection (after the messages queued before it).
    Close(Pid),
    /// Add `track` (published by `publisher`) to `subscriber`'s downstream session.
    Subscribe {
        subscriber: Pid,
        publisher: Pid,
        track: String,
    },
    /// The participant is gone: drop its media sessions and every downstream copy of its tracks.
    DropMedia(Pid),
}

#[derive(Debug)]
struct Participant {
    info: proto::ParticipantInfo,
    room: String,
    /// Tracks announced by `add_track` whose media line has not appeared yet (cid, info).
    pending: Vec<(String, proto::TrackInfo)>,
}

#[derive(Debug)]
struct Room {
    info: proto::Room,
    members: Vec<Pid>,
}

/// All rooms of the server.
#[derive(Debug)]
pub struct Core {
    rooms: BTreeMap<String, Room>,
    parts: BTreeMap<Pid, Participant>,
    auto_create: bool,
}

/// A random LiveKit-style id with the given prefix (`PA_`, `RM_`, `TR_AM`).
pub fn new_sid(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..12)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// The server identity reported to clients (what LiveKit 1.13.5 says).
pub fn server_info() -> proto::ServerInfo {
    proto::ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: "1.13.5".into(),
        protocol: 17,
        node_id: "mi-test-sfu".into(),
        ..Default::default()
    }
}

fn leave(reason: proto::DisconnectReason, action: proto::leave_request::Action) -> Resp {
    Resp::Leave(proto::LeaveRequest {
        can_reconnect: action != proto::leave_request::Action::Disconnect,
        reason: reason as i32,
        action: action as i32,
        regions: None,
    })
}

impl Core {
    pub fn new(auto_create: bool) -> Self {
        Core {
            rooms: BTreeMap::new(),
            parts: BTreeMap::new(),
            auto_create,
        }
    }

    /// CreateRoom: returns the (new or existing) room.
    pub fn create_room(&mut self, name: &str, now_ms: i64) -> proto::Room {
        let room = self.rooms.entry(name.to_string()).or_insert_with(|| Room {
            info: proto::Room {
                sid: new_sid("RM_"),
                name: name.to_string(),
                empty_timeout: 300,
                departure_timeout: 20,
                creation_time: now_ms / 1000,
                creation_time_ms: now_ms,
                ..Default::default()
            },
            members: Vec::new(),
        });
        room.info.clone()
    }

    /// Whether a join into `room` would be accepted now.
    pub fn check_room(&self, room: &str) -> Result<(), JoinError> {
        if self.auto_create || self.rooms.contains_key(room) {
            Ok(())
        } else {
            Err(JoinError::RoomNotFound)
        }
    }

    /// A participant joins. Returns its sid, its JoinResponse (to send first), then actions.
    pub fn join(
        &mut self,
        grant: &JoinGrant,
        now_ms: i64,
    ) -> Result<(Pid, proto::JoinResponse, Vec<Out>), JoinError> {
        self.check_room(&grant.room)?;
        let mut out = Vec::new();
        // A second connection with the same identity replaces the first.
        let dup: Vec<Pid> = self
            .members(&grant.room)
            .filter(|p| self.parts[*p].info.identity == grant.identity)
            .cloned()
            .collect();
        for pid in dup {
            out.extend(self.remove(&pid, proto::DisconnectReason::DuplicateIdentity, true));
        }
        let room_info = self.create_room(&grant.room, now_ms);
        let pid = new_sid("PA_");
        let info = proto::ParticipantInfo {
            sid: pid.clone(),
            identity: grant.identity.clone(),
            name: grant.name.clone(),
            metadata: grant.metadata.clone(),
            state: State::Joined as i32,
            joined_at: now_ms / 1000,
            joined_at_ms: now_ms,
            version: 1,
            permission: Some(proto::ParticipantPermission {
                can_subscribe: grant.can_subscribe,
                can_publish: grant.can_publish,
                can_publish_data: grant.can_publish_data,
                ..Default::default()
            }),
            ..Default::default()
        };
        let others: Vec<proto::ParticipantInfo> = self
            .members(&grant.room)
            .map(|p| self.parts[p].info.clone())
            .collect();
        for other in &others {
            for t in &other.tracks {
                out.push(Out::Subscribe {
                    subscriber: pid.clone(),
                    publisher: other.sid.clone(),
                    track: t.sid.clone(),
                });
            }
        }
        self.broadcast(&grant.room, None, &info, &mut out);
        self.parts.insert(
            pid.clone(),
            Participant {
                info: info.clone(),
                room: grant.room.clone(),
                pending: Vec::new(),
            },
        );
        let room = self.rooms.get_mut(&grant.room).expect("room created above");
        room.members.push(pid.clone());
        room.info.num_participants = room.members.len() as u32;
        let join = proto::JoinResponse {
            room: Some(proto::Room {
                num_participants: room.members.len() as u32,
                ..room_info
            }),
            participant: Some(info),
            other_participants: others,
            server_version: "1.13.5".into(),
            subscriber_primary: grant.can_subscribe,
            ping_timeout: 15,
            ping_interval: 5,
            server_info: Some(server_info()),
            fast_publish: grant.can_publish,
            ..Default::default()
        };
        Ok((pid, join, out))
    }

    fn members<'a>(&'a self, room: &str) -> impl Iterator<Item = &'a Pid> + 'a {
        self.rooms
            .get(room)
            .map(|r| r.members.iter())
            .into_iter()
            .flatten()
    }

    /// Send `info` as a ParticipantUpdate to every member of `room` except `except`.
    fn broadcast(
        &self,
        room: &str,
        except: Option<&str>,
        info: &proto::ParticipantInfo,
        out: &mut Vec<Out>,
    ) {
        for p in self.members(room) {
            if Some(p.as_str()) != except {
                out.push(Out::Signal(
                    p.clone(),
                    Resp::Update(proto::ParticipantUpdate {
                        participants: vec![info.clone()],
                    }),
                ));
            }
        }
    }

    fn bump(&mut self, pid: &str) -> Option<(String, proto::ParticipantInfo)> {
        let p = self.parts.get_mut(pid)?;
        p.info.version += 1;
        Some((p.room.clone(), p.info.clone()))
    }

    /// The participant's primary connection came up.
    pub fn set_active(&mut self, pid: &str) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(p) = self.parts.get_mut(pid) else {
            return out;
        };
        if p.info.state == State::Active as i32 {
            return out;
        }
        p.info.state = State::Active as i32;
        if let Some((room, info)) = self.bump(pid) {
            self.broadcast(&room, None, &info, &mut out);
        }
        out
    }

    /// `add_track`: answer with `track_published` and remember the track until its media line shows up.
    pub fn add_track(&mut self, pid: &str, req: &proto::AddTrackRequest) -> Vec<Out> {
        let Some(p) = self.parts.get_mut(pid) else {
            return Vec::new();
        };
        let perm = p.info.permission.as_ref();
        if req.r#type != proto::TrackType::Audio as i32 || !perm.is_some_and(|x| x.can_publish) {
            return vec![Out::Signal(
                pid.to_string(),
                Resp::RequestResponse(proto::RequestResponse {
                    reason: proto::request_response::Reason::NotAllowed as i32,
                    message: "only audio tracks with canPublish are supported".into(),
                    ..Default::default()
                }),
            )];
        }
        let source = if req.source == 0 {
            proto::TrackSource::Microphone as i32
        } else {
            req.source
        };
        let track = proto::TrackInfo {
            sid: new_sid("TR_AM"),
            r#type: proto::TrackType::Audio as i32,
            name: req.name.clone(),
            muted: req.muted,
            source,
            mime_type: "audio/opus".into(),
            disable_red: req.disable_red,
            encryption: req.encryption,
            stream: req.stream.clone(),
            audio_features: req.audio_features.clone(),
            ..Default::default()
        };
        p.pending.push((req.cid.clone(), track.clone()));
        vec![Out::Signal(
            pid.to_string(),
            Resp::TrackPublished(proto::TrackPublishedResponse {
                cid: req.cid.clone(),
                track: Some(track),
            }),
        )]
    }

    /// The publisher's session received a media line `mid` carrying SDP track id `cid`:
    /// the matching pending track (same cid, else the oldest) is now published.
    /// Returns the track sid (if one matched) and the actions.
    pub fn media_line_added(
        &mut self,
        pid: &str,
        mid: &str,
        cid: Option<&str>,
    ) -> (Option<String>, Vec<Out>) {
        let mut out = Vec::new();
        let Some(p) = self.parts.get_mut(pid) else {
            return (None, out);
        };
        if p.info.tracks.iter().any(|t| t.mid == mid) {
            return (None, out);
        }
        let idx = cid
            .and_then(|c| p.pending.iter().position(|(pc, _)| pc == c))
            .or(if p.pending.is_empty() { None } else { Some(0) });
        let Some(idx) = idx else {
            return (None, out);
        };
        let (_, mut track) = p.pending.remove(idx);
        track.mid = mid.to_string();
        let sid = track.sid.clone();
        p.info.tracks.push(track);
        p.info.is_publisher = true;
        let room = p.room.clone();
        if let Some((_, info)) = self.bump(pid) {
            // TrackInfo first, then the downstream offers.
            self.broadcast(&room, None, &info, &mut out);
        }
        for sub in self.members(&room) {
            if sub != pid && self.parts[sub].info.state != State::Disconnected as i32 {
                out.push(Out::Subscribe {
                    subscriber: sub.clone(),
                    publisher: pid.to_string(),
                    track: sid.clone(),
                });
            }
        }
        (Some(sid), out)
    }

    /// `mute` from the publisher: record it and tell everyone.
    pub fn mute(&mut self, pid: &str, track: &str, muted: bool) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(p) = self.parts.get_mut(pid) else {
            return out;
        };
        let Some(t) = p.info.tracks.iter_mut().find(|t| t.sid == track) else {
            return out;
        };
        if t.muted == muted {
            return out;
        }
        t.muted = muted;
        if let Some((room, info)) = self.bump(pid) {
            self.broadcast(&room, None, &info, &mut out);
        }
        out
    }

    /// The published track carried on the publisher's media line `mid`, if any.
    pub fn track_of_mid(&self, pid: &str, mid: &str) -> Option<&str> {
        let p = self.parts.get(pid)?;
        p.info
            .tracks
            .iter()
            .find(|t| t.mid == mid)
            .map(|t| t.sid.as_str())
    }

    /// Whether `pid` exists and is ACTIVE (receives forwarded media).
    pub fn is_active(&self, pid: &str) -> bool {
        self.parts
            .get(pid)
            .is_some_and(|p| p.info.state == State::Active as i32)
    }

    /// Whether `pid` is a participant with this identity in this room (for resumes).
    pub fn is_member(&self, pid: &str, identity: &str, room: &str) -> bool {
        self.parts
            .get(pid)
            .is_some_and(|p| p.info.identity == identity && p.room == room)
    }

    /// Infos of everyone else in `pid`'s room.
    pub fn others(&self, pid: &str) -> Vec<proto::ParticipantInfo> {
        let Some(p) = self.parts.get(pid) else {
            return Vec::new();
        };
        self.members(&p.room)
            .filter(|m| *m != pid)
            .map(|m| self.parts[m].info.clone())
            .collect()
    }

    pub fn contains(&self, pid: &str) -> bool {
        self.parts.contains_key(pid)
    }

    /// The participant left (`leave` request, vanished connection, ...): tell the others.
    pub fn participant_gone(&mut self, pid: &str, reason: proto::DisconnectReason) -> Vec<Out> {
        self.remove(pid, reason, false)
    }

    /// Remove a participant; with `notify_self` it first gets a `LeaveRequest{reason, DISCONNECT}`.
    fn remove(
        &mut self,
        pid: &str,
        reason: proto::DisconnectReason,
        notify_self: bool,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(mut p) = self.parts.remove(pid) else {
            return out;
        };
        if notify_self {
            out.push(Out::Signal(
                pid.to_string(),
                leave(reason, proto::leave_request::Action::Disconnect),
            ));
        }
        out.push(Out::Close(pid.to_string()));
        out.push(Out::DropMedia(pid.to_string()));
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|m| m != pid);
            room.info.num_participants = room.members.len() as u32;
        }
        p.info.state = State::Disconnected as i32;
        p.info.disconnect_reason = reason as i32;
        p.info.version += 1;
        self.broadcast(&p.room, None, &p.info, &mut out);
        out
    }

    /// DeleteRoom: everyone gets `LeaveRequest{ROOM_DELETED, DISCONNECT}`. False if no such room.
    pub fn delete_room(&mut self, name: &str) -> Option<Vec<Out>> {
        let room = self.rooms.remove(name)?;
        let mut out = Vec::new();
        for pid in &room.members {
            if self.parts.remove(pid).is_some() {
                out.push(Out::Signal(
                    pid.clone(),
                    leave(
                        proto::DisconnectReason::RoomDeleted,
                        proto::leave_request::Action::Disconnect,
                    ),
                ));
                out.push(Out::Close(pid.clone()));
                out.push(Out::DropMedia(pid.clone()));
            }
        }
        Some(out)
    }

    /// Server shutdown: everyone gets `LeaveRequest{SERVER_SHUTDOWN, DISCONNECT}`.
    pub fn shutdown(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        for pid in std::mem::take(&mut self.parts).into_keys() {
            out.push(Out::Signal(
                pid.clone(),
                leave(
                    proto::DisconnectReason::ServerShutdown,
                    proto::leave_request::Action::Disconnect,
                ),
            ));
            out.push(Out::Close(pid.clone()));
            out.push(Out::DropMedia(pid));
        }
        self.rooms.clear();
        out
    }

    pub fn list_participants(&self, room: &str) -> Option<Vec<proto::ParticipantInfo>> {
        let r = self.rooms.get(room)?;
        Some(
            r.members
                .iter()
                .map(|p| self.parts[p].info.clone())
                .collect(),
        )
    }

    pub fn list_rooms(&self, names: &[String]) -> Vec<proto::Room> {
        self.rooms
            .values()
            .filter(|r| names.is_empty() || names.contains(&r.info.name))
            .map(|r| r.info.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn updates_for<'a>(out: &'a [Out], pid: &str) -> Vec<&'a proto::ParticipantInfo> {
        out.iter()
            .filter_map(|o| match o {
                Out::Signal(p, Resp::Update(u)) if p == pid => Some(&u.participants[0]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn join_without_auto_create_needs_the_room() {
        let mut core = Core::new(false);
        assert_eq!(
            core.join(&grant("a"), 0).unwrap_err(),
            JoinError::RoomNotFound
        );
        core.create_room("r", 0);
        let (pid, join, _) = core.join(&grant("a"), 0).unwrap();
        assert!(pid.starts_with("PA_"));
        assert!(join.room.unwrap().sid.starts_with("RM_"));
        assert_eq!((join.ping_interval, join.ping_timeout), (5, 15));
    }

    #[test]
    fn published_track_is_announced_before_subscription_and_leave_is_broadcast() {
        let mut core = Core::new(true);
        let (a, _, _) = core.join(&grant("a"), 0).unwrap();
        let (b, join_b, out) = core.join(&grant("b"), 0).unwrap();
        assert_eq!(join_b.other_participants.len(), 1);
        assert_eq!(updates_for(&out, &a)[0].identity, "b");
        let out = core.add_track(
            &a,
            &proto::AddTrackRequest {
                cid: "mic".into(),
                r#type: proto::TrackType::Audio as i32,
                ..Default::default()
            },
        );
        assert!(
            matches!(&out[0], Out::Signal(_, Resp::TrackPublished(t)) if t.track.as_ref().unwrap().sid.starts_with("TR_AM"))
        );
        let (sid, out) = core.media_line_added(&a, "3", Some("mic"));
        let sid = sid.unwrap();
        let upd = out
            .iter()
            .position(|o| matches!(o, Out::Signal(p, Resp::Update(_)) if *p == b))
            .unwrap();
        let sub = out
            .iter()
            .position(|o| matches!(o, Out::Subscribe { subscriber, track, .. } if *subscriber == b && *track == sid))
            .unwrap();
        assert!(upd < sub);
        assert_eq!(core.track_of_mid(&a, "3"), Some(sid.as_str()));
        let out = core.mute(&a, &sid, true);
        assert!(updates_for(&out, &b)[0].tracks[0].muted);
        assert!(core.mute(&a, &sid, true).is_empty());
        let out = core.participant_gone(&a, proto::DisconnectReason::ClientInitiated);
        let gone = updates_for(&out, &b);
        assert_eq!(gone[0].state, State::Disconnected as i32);
        assert_eq!(
            gone[0].disconnect_reason,
            proto::DisconnectReason::ClientInitiated as i32
        );
    }

    #[test]
    fn delete_room_sends_room_deleted_to_everyone() {
        let mut core = Core::new(true);
        let (a, _, _) = core.join(&grant("a"), 0).unwrap();
        let (b, _, _) = core.join(&grant("b"), 0).unwrap();
        let out = core.delete_room("r").unwrap();
        for pid in [&a, &b] {
            assert!(out
                .iter()
                .any(|o| matches!(o, Out::Signal(p, Resp::Leave(l))
                if p == pid && l.reason == proto::DisconnectReason::RoomDeleted as i32
                && l.action == proto::leave_request::Action::Disconnect as i32)));
        }
        assert!(core.delete_room("r").is_none());
    }
}
