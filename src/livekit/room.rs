//! The room as the signalling channel describes it: who is in it, who speaks, and what a
//! server `LeaveRequest` asks of us.
//!
//! Sans-IO: fed decoded protobuf messages, returns [`LiveKitEvent`]s and decisions. Knows
//! nothing of sockets, peer connections or audio.

use std::collections::{BTreeMap, HashSet};

use livekit_protocol as proto;
use proto::participant_info::State as ParticipantState;

/// A remote participant of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParticipant {
    /// LiveKit identity; for MatrixRTC `@user:server:DEVICE` (see [`super::split_identity`]).
    pub identity: String,
    /// LiveKit participant sid (`PA_…`).
    pub sid: String,
    /// Whether the SFU currently reports this participant as an active speaker.
    pub speaking: bool,
    /// Sids (`TR_…`) of the participant's published audio tracks.
    pub audio_tracks: Vec<String>,
}

/// Why the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The room was deleted on the server (e.g. Twirp `DeleteRoom`).
    RoomDeleted,
    /// The SFU is shutting down.
    ServerShutdown,
    /// An administrator removed this participant.
    Removed,
    /// Another client joined with the same identity.
    DuplicateIdentity,
    /// The room was closed by the server.
    RoomClosed,
    /// The signalling connection was lost and could not be restored.
    SignalLost(String),
    /// The media connection failed or could not be established.
    MediaFailed(String),
    /// Any other server reason (LiveKit `DisconnectReason` number).
    Server(i32),
}

impl DisconnectReason {
    fn from_proto(reason: i32) -> Self {
        use proto::DisconnectReason as R;
        match R::try_from(reason) {
            Ok(R::RoomDeleted) => Self::RoomDeleted,
            Ok(R::ServerShutdown) => Self::ServerShutdown,
            Ok(R::ParticipantRemoved) => Self::Removed,
            Ok(R::DuplicateIdentity) => Self::DuplicateIdentity,
            Ok(R::RoomClosed) => Self::RoomClosed,
            _ => Self::Server(reason),
        }
    }
}

/// What the daemon hears about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveKitEvent {
    ParticipantJoined {
        identity: String,
    },
    ParticipantLeft {
        identity: String,
    },
    /// Identities of everyone currently speaking (complete list).
    SpeakersChanged(Vec<String>),
    /// The connection to the SFU was interrupted; audio may stop until `Reconnected`.
    Reconnecting,
    Reconnected,
    /// The call is over; no further events follow.
    Disconnected {
        reason: DisconnectReason,
    },
}

/// What a server `LeaveRequest` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveDecision {
    Disconnect(DisconnectReason),
    /// Resume the session (`reconnect=1&sid=`, ICE restart).
    Resume,
    /// Join again from scratch.
    Rejoin,
}

/// Interprets a server `LeaveRequest`.
pub fn leave_decision(leave: &proto::LeaveRequest) -> LeaveDecision {
    use proto::leave_request::Action;
    match Action::try_from(leave.action) {
        Ok(Action::Resume) => LeaveDecision::Resume,
        Ok(Action::Reconnect) => LeaveDecision::Rejoin,
        // Old servers (protocol < 13) leave `action` unset and use `can_reconnect`.
        Ok(Action::Disconnect) if leave.can_reconnect => LeaveDecision::Rejoin,
        _ => LeaveDecision::Disconnect(DisconnectReason::from_proto(leave.reason)),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    participant: RemoteParticipant,
    version: u32,
}

/// Participants of the room other than ourselves, keyed by sid.
#[derive(Debug, Default)]
pub struct Room {
    local_sid: String,
    participants: BTreeMap<String, Entry>,
    speakers: HashSet<String>,
    /// Video tracks already declined (the device plays audio only).
    declined_video: HashSet<String>,
}

fn audio_tracks(info: &proto::ParticipantInfo) -> Vec<String> {
    info.tracks
        .iter()
        .filter(|t| t.r#type == proto::TrackType::Audio as i32)
        .map(|t| t.sid.clone())
        .collect()
}

impl Room {
    /// Builds the room from a `JoinResponse`; the events announce who was already there.
    pub fn from_join(join: &proto::JoinResponse) -> (Self, Vec<LiveKitEvent>) {
        let mut room = Room {
            local_sid: join
                .participant
                .as_ref()
                .map(|p| p.sid.clone())
                .unwrap_or_default(),
            ..Room::default()
        };
        let events = room.on_participant_update(&join.other_participants);
        (room, events)
    }

    pub fn participants(&self) -> Vec<RemoteParticipant> {
        self.participants
            .values()
            .map(|e| e.participant.clone())
            .collect()
    }

    pub fn identity_of(&self, participant_sid: &str) -> Option<&str> {
        self.participants
            .get(participant_sid)
            .map(|e| e.participant.identity.as_str())
    }

    /// Applies a `ParticipantUpdate` (full infos; stale versions ignored).
    pub fn on_participant_update(&mut self, infos: &[proto::ParticipantInfo]) -> Vec<LiveKitEvent> {
        let mut events = Vec::new();
        for info in infos {
            if info.sid.is_empty() || info.sid == self.local_sid {
                continue;
            }
            let gone = info.state == ParticipantState::Disconnected as i32;
            match self.participants.get_mut(&info.sid) {
                Some(entry) if info.version != 0 && info.version < entry.version => continue,
                Some(_) if gone => {
                    let entry = self.participants.remove(&info.sid).expect("present");
                    self.speakers.remove(&info.sid);
                    events.push(LiveKitEvent::ParticipantLeft {
                        identity: entry.participant.identity,
                    });
                }
                Some(entry) => {
                    entry.version = info.version;
                    entry.participant.audio_tracks = audio_tracks(info);
                }
                None if gone => {}
                None => {
                    let participant = RemoteParticipant {
                        identity: info.identity.clone(),
                        sid: info.sid.clone(),
                        speaking: false,
                        audio_tracks: audio_tracks(info),
                    };
                    events.push(LiveKitEvent::ParticipantJoined {
                        identity: participant.identity.clone(),
                    });
                    self.participants.insert(
                        info.sid.clone(),
                        Entry {
                            participant,
                            version: info.version,
                        },
                    );
                }
            }
        }
        events
    }

    /// Video tracks in `infos` not declined yet: the device unsubscribes from them so the SFU
    /// does not send video to an audio-only device (auto-subscribe takes every track).
    pub fn undeclined_video(&mut self, infos: &[proto::ParticipantInfo]) -> Vec<String> {
        let video = proto::TrackType::Video as i32;
        infos
            .iter()
            .filter(|i| i.sid != self.local_sid)
            .flat_map(|i| i.tracks.iter())
            .filter(|t| t.r#type == video && !t.sid.is_empty())
            .filter(|t| self.declined_video.insert(t.sid.clone()))
            .map(|t| t.sid.clone())
            .collect()
    }

    /// Applies a `SpeakersChanged` (a delta); returns the new complete list if it changed.
    pub fn on_speakers_changed(&mut self, speakers: &[proto::SpeakerInfo]) -> Option<LiveKitEvent> {
        let before = self.speakers.clone();
        for s in speakers {
            if s.sid == self.local_sid {
                continue;
            }
            if s.active {
                self.speakers.insert(s.sid.clone());
            } else {
                self.speakers.remove(&s.sid);
            }
        }
        self.speakers
            .retain(|sid| self.participants.contains_key(sid));
        for entry in self.participants.values_mut() {
            entry.participant.speaking = self.speakers.contains(&entry.participant.sid);
        }
        if before == self.speakers {
            return None;
        }
        let list = self
            .participants
            .values()
            .filter(|e| e.participant.speaking)
            .map(|e| e.participant.identity.clone())
            .collect();
        Some(LiveKitEvent::SpeakersChanged(list))
    }

    /// Forgets everyone (after a full rejoin the new JoinResponse re-announces them); returns
    /// `ParticipantLeft` for those not in `keep`.
    pub fn reset_for_rejoin(&mut self, join: &proto::JoinResponse) -> Vec<LiveKitEvent> {
        let keep: HashSet<&str> = join
            .other_participants
            .iter()
            .map(|p| p.identity.as_str())
            .collect();
        let mut events: Vec<LiveKitEvent> = self
            .participants
            .values()
            .filter(|e| !keep.contains(e.participant.identity.as_str()))
            .map(|e| LiveKitEvent::ParticipantLeft {
                identity: e.participant.identity.clone(),
            })
            .collect();
        let known: HashSet<String> = self
            .participants
            .values()
            .map(|e| e.participant.identity.clone())
            .collect();
        let (fresh, joined) = Room::from_join(join);
        *self = fresh;
        events.extend(joined.into_iter().filter(|e| match e {
            LiveKitEvent::ParticipantJoined { identity } => !known.contains(identity),
            _ => true,
        }));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        sid: &str,
        identity: &str,
        state: ParticipantState,
        version: u32,
    ) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: identity.into(),
            state: state as i32,
            version,
            tracks: vec![proto::TrackInfo {
                sid: format!("TR_AM{sid}"),
                r#type: proto::TrackType::Audio as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn join(others: Vec<proto::ParticipantInfo>) -> proto::JoinResponse {
        proto::JoinResponse {
            participant: Some(info("PA_me", "@me:hs:DEV", ParticipantState::Joined, 1)),
            other_participants: others,
            ..Default::default()
        }
    }

    #[test]
    fn join_announces_present_participants() {
        let (room, events) = Room::from_join(&join(vec![info(
            "PA_a",
            "@a:hs:A",
            ParticipantState::Active,
            1,
        )]));
        assert_eq!(
            events,
            vec![LiveKitEvent::ParticipantJoined {
                identity: "@a:hs:A".into()
            }]
        );
        let p = room.participants();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].audio_tracks, vec!["TR_AMPA_a".to_string()]);
    }

    #[test]
    fn joins_and_leaves_are_reported_once_and_self_is_ignored() {
        let (mut room, _) = Room::from_join(&join(vec![]));
        let ev = room.on_participant_update(&[
            info("PA_me", "@me:hs:DEV", ParticipantState::Active, 2),
            info("PA_b", "@b:hs:B", ParticipantState::Joining, 1),
        ]);
        assert_eq!(
            ev,
            vec![LiveKitEvent::ParticipantJoined {
                identity: "@b:hs:B".into()
            }]
        );
        assert!(room
            .on_participant_update(&[info("PA_b", "@b:hs:B", ParticipantState::Active, 2)])
            .is_empty());
        let ev = room.on_participant_update(&[info(
            "PA_b",
            "@b:hs:B",
            ParticipantState::Disconnected,
            3,
        )]);
        assert_eq!(
            ev,
            vec![LiveKitEvent::ParticipantLeft {
                identity: "@b:hs:B".into()
            }]
        );
        assert!(room.participants().is_empty());
        // A repeated DISCONNECTED update for someone unknown says nothing.
        assert!(room
            .on_participant_update(&[info("PA_b", "@b:hs:B", ParticipantState::Disconnected, 4)])
            .is_empty());
    }

    #[test]
    fn stale_updates_are_ignored() {
        let (mut room, _) = Room::from_join(&join(vec![info(
            "PA_a",
            "@a:hs:A",
            ParticipantState::Active,
            5,
        )]));
        assert!(room
            .on_participant_update(&[info("PA_a", "@a:hs:A", ParticipantState::Disconnected, 4)])
            .is_empty());
        assert_eq!(room.participants().len(), 1);
    }

    #[test]
    fn speakers_are_tracked_as_a_complete_list() {
        let (mut room, _) = Room::from_join(&join(vec![
            info("PA_a", "@a:hs:A", ParticipantState::Active, 1),
            info("PA_b", "@b:hs:B", ParticipantState::Active, 1),
        ]));
        let s = |sid: &str, active| proto::SpeakerInfo {
            sid: sid.into(),
            level: 0.5,
            active,
        };
        assert_eq!(
            room.on_speakers_changed(&[s("PA_a", true)]),
            Some(LiveKitEvent::SpeakersChanged(vec!["@a:hs:A".into()]))
        );
        assert_eq!(
            room.on_speakers_changed(&[s("PA_b", true), s("PA_me", true)]),
            Some(LiveKitEvent::SpeakersChanged(vec![
                "@a:hs:A".into(),
                "@b:hs:B".into()
            ]))
        );
        assert_eq!(room.on_speakers_changed(&[s("PA_b", true)]), None);
        assert_eq!(
            room.on_speakers_changed(&[s("PA_a", false)]),
            Some(LiveKitEvent::SpeakersChanged(vec!["@b:hs:B".into()]))
        );
        assert!(room
            .participants()
            .iter()
            .any(|p| p.sid == "PA_b" && p.speaking));
    }

    #[test]
    fn video_tracks_are_declined_once() {
        let (mut room, _) = Room::from_join(&join(vec![]));
        let mut camera = info("PA_v", "@v:hs:V", ParticipantState::Active, 1);
        camera.tracks.push(proto::TrackInfo {
            sid: "TR_VCcam".into(),
            r#type: proto::TrackType::Video as i32,
            ..Default::default()
        });
        assert_eq!(room.undeclined_video(&[camera.clone()]), vec!["TR_VCcam"]);
        assert!(room.undeclined_video(&[camera]).is_empty());
        let audio_only = info("PA_a", "@a:hs:A", ParticipantState::Active, 1);
        assert!(room.undeclined_video(&[audio_only]).is_empty());
    }

    #[test]
    fn leave_requests_map_to_decisions() {
        use proto::leave_request::Action;
        let leave = |reason: proto::DisconnectReason, action: Action| proto::LeaveRequest {
            reason: reason as i32,
            action: action as i32,
            ..Default::default()
        };
        assert_eq!(
            leave_decision(&leave(
                proto::DisconnectReason::RoomDeleted,
                Action::Disconnect
            )),
            LeaveDecision::Disconnect(DisconnectReason::RoomDeleted)
        );
        assert_eq!(
            leave_decision(&leave(
                proto::DisconnectReason::ServerShutdown,
                Action::Disconnect
            )),
            LeaveDecision::Disconnect(DisconnectReason::ServerShutdown)
        );
        assert_eq!(
            leave_decision(&leave(
                proto::DisconnectReason::StateMismatch,
                Action::Reconnect
            )),
            LeaveDecision::Rejoin
        );
        assert_eq!(
            leave_decision(&leave(
                proto::DisconnectReason::MediaFailure,
                Action::Resume
            )),
            LeaveDecision::Resume
        );
        assert_eq!(
            leave_decision(&proto::LeaveRequest {
                action: 77,
                reason: 999,
                ..Default::default()
            }),
            LeaveDecision::Disconnect(DisconnectReason::Server(999))
        );
    }

    #[test]
    fn rejoin_reports_only_real_changes() {
        let (mut room, _) = Room::from_join(&join(vec![
            info("PA_a", "@a:hs:A", ParticipantState::Active, 1),
            info("PA_b", "@b:hs:B", ParticipantState::Active, 1),
        ]));
        let ev = room.reset_for_rejoin(&join(vec![
            info("PA_a2", "@a:hs:A", ParticipantState::Active, 1),
            info("PA_c", "@c:hs:C", ParticipantState::Active, 1),
        ]));
        assert_eq!(
            ev,
            vec![
                LiveKitEvent::ParticipantLeft {
                    identity: "@b:hs:B".into()
                },
                LiveKitEvent::ParticipantJoined {
                    identity: "@c:hs:C".into()
                }
            ]
        );
        assert_eq!(room.identity_of("PA_a2"), Some("@a:hs:A"));
    }
}
