//! The call driver: carries out `Join` and `Leave` with the Matrix side, the LiveKit client and
//! the audio engine, and turns what they report into machine events.
//!
//! Every `Join` is answered by `Joined` or `Failed`; every `Leave` by `Left` (also when leaving
//! failed), as the machine's contract asks. A `Leave` while the join is still under way aborts
//! the join task first, then removes whatever it had published.

use super::presence::{Change, Presence, Source};
use crate::audio::AudioEngine;
use crate::livekit::{self, ConnectOptions, DisconnectReason, E2eeKeys, LiveKitCall, LiveKitEvent};
use crate::machine::Event;
use crate::matrix::{MatrixEvent, MatrixSide, MediaKeyUpdate};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the drivers tell the daemon loop (mapped to machine events there).
#[derive(Debug)]
pub enum Report {
    Machine(Event),
    /// The Matrix side could not start (yet); retried with backoff.
    MatrixDown(String),
    /// A device of another user appeared or went away.
    Device {
        user: String,
        device: String,
        source: Source,
        present: bool,
    },
}

pub struct CallDriver {
    matrix: Arc<MatrixSide>,
    audio: Arc<AudioEngine>,
    lk_opts: ConnectOptions,
    /// `[call] require_encryption`: refuse calls in rooms without `m.room.encryption`.
    require_encryption: bool,
    reports: mpsc::Sender<Report>,
    call: Arc<tokio::sync::Mutex<Option<LiveKitCall>>>,
    join_task: Option<JoinHandle<()>>,
    /// Bumped on every join so that a finished call's late events are ignored.
    generation: Arc<Mutex<u64>>,
}

impl CallDriver {
    pub fn new(
        matrix: Arc<MatrixSide>,
        audio: Arc<AudioEngine>,
        lk_opts: ConnectOptions,
        require_encryption: bool,
        reports: mpsc::Sender<Report>,
    ) -> Self {
        Self {
            matrix,
            audio,
            lk_opts,
            require_encryption,
            reports,
            call: Arc::default(),
            join_task: None,
            generation: Arc::default(),
        }
    }

    /// Starts joining: media keys (encrypted rooms), grant, LiveKit, membership; then `Joined`
    /// and the members already there.
    pub fn join(&mut self) {
        let generation = {
            let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        let (matrix, audio, opts, reports, call) = (
            self.matrix.clone(),
            self.audio.clone(),
            self.lk_opts.clone(),
            self.reports.clone(),
            self.call.clone(),
        );
        let current = self.generation.clone();
        let require_encryption = self.require_encryption;
        self.join_task = Some(tokio::spawn(async move {
            let mut opts = opts;
            let result = async {
                // Element Call: media E2EE exactly when the room is encrypted. The exchange
                // starts before the membership is sent so no key sent to us is missed.
                if matrix.room_is_encrypted().await {
                    let keys = E2eeKeys::new();
                    let updates = matrix.start_media_keys().await;
                    tokio::spawn(install_media_keys(updates, keys.clone()));
                    opts.e2ee = Some(keys);
                } else if require_encryption {
                    return Err("the room is not end-to-end encrypted and [call] require_encryption is set (enable encryption in the room's settings)".to_owned());
                } else {
                    tracing::warn!("the room is not end-to-end encrypted: call media is not end-to-end encrypted");
                }
                let grant = matrix.rtc_grant().await.map_err(|e| e.to_string())?;
                tracing::info!(identity = %grant.identity, url = %grant.livekit_url, "joining the LiveKit room");
                let (lk, events) =
                    livekit::connect(&grant.livekit_url, &grant.jwt, opts, audio.source(), audio.sink())
                        .await
                        .map_err(|e| e.to_string())?;
                *call.lock().await = Some(lk);
                tokio::spawn(forward_livekit(events, reports.clone(), current, generation));
                matrix.join().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
            .await;
            match result {
                Ok(()) => {
                    let _ = reports.send(Report::Machine(Event::Joined)).await;
                    let me = (matrix.user_id().to_owned(), matrix.device_id().to_owned());
                    for m in matrix.members() {
                        if (m.user_id.as_str(), m.device_id.as_str())
                            != (me.0.as_str(), me.1.as_str())
                        {
                            let _ = reports
                                .send(Report::Device {
                                    user: m.user_id,
                                    device: m.device_id,
                                    source: Source::Matrix,
                                    present: true,
                                })
                                .await;
                        }
                    }
                }
                Err(reason) => {
                    tracing::error!("joining the call failed: {reason}");
                    let _ = reports
                        .send(Report::Machine(Event::Failed { reason }))
                        .await;
                }
            }
        }));
    }

    /// Leaves: aborts a join under way, leaves LiveKit and removes the membership; `Left`.
    pub fn leave(&mut self) {
        if let Some(task) = self.join_task.take() {
            task.abort();
        }
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let (matrix, reports, call) =
            (self.matrix.clone(), self.reports.clone(), self.call.clone());
        tokio::spawn(async move {
            if let Some(lk) = call.lock().await.take() {
                for t in lk.stats().tracks {
                    let d = t.stats.decode;
                    tracing::info!(
                        participant = t.identity.as_deref().unwrap_or("?"),
                        packets = t.stats.packets_received,
                        decoded = d.frames_decoded,
                        concealed = d.frames_concealed,
                        fec = d.frames_fec,
                        undecryptable = t.stats.undecryptable,
                        undecryptable_after_first_key = t.stats.undecryptable_after_first_key,
                        "call audio received"
                    );
                }
                lk.leave().await;
            }
            match matrix.leave().await {
                Ok(()) | Err(crate::matrix::MatrixError::NotJoined) => {}
                Err(e) => {
                    tracing::error!("removing the call membership failed: {e}");
                    let _ = reports
                        .send(Report::Machine(Event::Failed {
                            reason: e.to_string(),
                        }))
                        .await;
                }
            }
            let _ = reports.send(Report::Machine(Event::Left)).await;
        });
    }
}

/// Installs media keys from the Matrix side into the call's key ring until the exchange ends.
async fn install_media_keys(mut updates: mpsc::Receiver<MediaKeyUpdate>, keys: E2eeKeys) {
    while let Some(u) = updates.recv().await {
        match u {
            MediaKeyUpdate::Own { index, key } => keys.set_local_key(index, key.expose()),
            MediaKeyUpdate::Remote {
                identity,
                index,
                key,
            } => keys.set_remote_key(&identity, index, key.expose()),
        }
    }
}

async fn forward_livekit(
    mut events: mpsc::Receiver<LiveKitEvent>,
    reports: mpsc::Sender<Report>,
    current: Arc<Mutex<u64>>,
    generation: u64,
) {
    while let Some(ev) = events.recv().await {
        if *current.lock().unwrap_or_else(|p| p.into_inner()) != generation {
            return;
        }
        let report = match ev {
            LiveKitEvent::ParticipantJoined { identity }
            | LiveKitEvent::ParticipantLeft { identity }
                if livekit::split_identity(&identity).is_none() =>
            {
                tracing::debug!(%identity, "participant without a Matrix identity ignored");
                continue;
            }
            LiveKitEvent::ParticipantJoined { identity } => device_report(&identity, true),
            LiveKitEvent::ParticipantLeft { identity } => device_report(&identity, false),
            LiveKitEvent::SpeakersChanged(_) => continue,
            LiveKitEvent::Reconnecting => Report::Machine(Event::NetworkLost),
            LiveKitEvent::Reconnected => Report::Machine(Event::NetworkBack),
            LiveKitEvent::Disconnected { reason } => {
                tracing::info!(?reason, "LiveKit call over");
                Report::Machine(match reason {
                    DisconnectReason::RoomDeleted | DisconnectReason::RoomClosed => {
                        Event::CallEnded
                    }
                    other => Event::Failed {
                        reason: format!("media connection ended: {other:?}"),
                    },
                })
            }
        };
        if reports.send(report).await.is_err() {
            return;
        }
    }
}

fn device_report(identity: &str, present: bool) -> Report {
    let (user, device) = livekit::split_identity(identity).unwrap_or((identity, ""));
    Report::Device {
        user: user.to_owned(),
        device: device.to_owned(),
        source: Source::LiveKit,
        present,
    }
}

/// Maps a Matrix-side event to a report; door requests are checked against the allow-list.
pub fn matrix_report(ev: MatrixEvent, allowed_door_users: &[String]) -> Option<Report> {
    Some(match ev {
        MatrixEvent::MemberJoined { user_id, device_id } => Report::Device {
            user: user_id,
            device: device_id,
            source: Source::Matrix,
            present: true,
        },
        MatrixEvent::MemberLeft { user_id, device_id } => Report::Device {
            user: user_id,
            device: device_id,
            source: Source::Matrix,
            present: false,
        },
        MatrixEvent::CallEnded => Report::Machine(Event::CallEnded),
        MatrixEvent::IncomingCall => Report::Machine(Event::IncomingCall),
        MatrixEvent::IncomingCallGone => Report::Machine(Event::IncomingCallGone),
        MatrixEvent::TokenError { reason } => Report::Machine(Event::TokenError { reason }),
        MatrixEvent::ConnectionLost => Report::Machine(Event::NetworkLost),
        MatrixEvent::ConnectionBack => Report::Machine(Event::NetworkBack),
        MatrixEvent::DoorOpenRequest { user_id } => {
            if allowed_door_users.contains(&user_id) {
                Report::Machine(Event::DoorOpenRequested { user: user_id })
            } else {
                tracing::warn!(user = %user_id, "door-open request from a user not in [relay] allowed_users ignored");
                return None;
            }
        }
    })
}

/// Applies a device report to the presence book; the machine event to send, if any.
pub fn presence_event(presence: &mut Presence, r: &Report) -> Option<Event> {
    let Report::Device {
        user,
        device,
        source,
        present,
    } = r
    else {
        return None;
    };
    let change = if *present {
        presence.add(user, device, *source)
    } else {
        presence.remove(user, device, *source)
    };
    change.map(|c| match c {
        Change::Joined(user) => Event::MemberJoined { user },
        Change::Left(user) => Event::MemberLeft { user },
    })
}
