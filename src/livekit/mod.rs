//! The device's LiveKit client (issue \[livekit\]): joins a LiveKit room over the v0 `/rtc`
//! signalling with two str0m peer connections (publisher = our offer with one Opus mic
//! track, subscriber = answers to the SFU's offers), and moves audio between a
//! [`PcmSource`]/[`PcmSink`] pair and the SFU.
//!
//! Owns: LiveKit signalling, ICE/DTLS/RTP via str0m, Opus, jitter buffers, the mixer, and the
//! capture and playback threads. Must not touch: Matrix (the JWT and URL come from the
//! caller), ALSA (the PCM traits hide it), the call state machine (it gets [`LiveKitEvent`]s).
//!
//! Layout: [`room`] (who is there, sans-IO), [`jitter`] and [`mixer`] (sans-IO audio),
//! [`codec`] (Opus), [`e2ee`] (Element Call media encryption), [`sdp`] (SDP and trickle
//! text), [`net`] and [`peer`] (sockets and str0m), [`audio`] (threads), `session` (the task
//! tying them together) and `recovery` (resume after a lost link, full rejoin).
//!
//! Use: [`connect`] with the SFU URL and JWT from the MatrixRTC authorisation service, then
//! read [`LiveKitEvent`]s until `Disconnected`, or call [`LiveKitCall::leave`]. A lost
//! signalling link is resumed (`Reconnecting` … `Reconnected`); if the server refuses the
//! resume the client joins again as a new participant. The device plays audio only: video
//! tracks are declined.

pub mod audio;
pub mod codec;
pub mod e2ee;
mod identity;
pub mod jitter;
mod media;
pub mod mixer;
mod negotiation;
pub mod net;
pub mod peer;
mod recovery;
pub mod room;
pub mod sdp;
mod session;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::pcm::{PcmSink, PcmSource};
use crate::secret::Secret;

pub use audio::TrackStats;
pub use e2ee::E2eeKeys;
pub use identity::split_identity;
pub use room::{DisconnectReason, LiveKitEvent, RemoteParticipant};
pub use sdp::IpNet;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local address for the media sockets. Default: the address the kernel routes from
    /// towards the SFU host.
    pub bind_ip: Option<IpAddr>,
    /// Networks remote ICE candidates may come from (others are ignored). `None`: any.
    pub allowed_remote_nets: Option<Vec<IpNet>>,
    /// How long the peer connections may take to come up before the call fails.
    pub media_timeout: Duration,
    /// Media end-to-end encryption (encrypted Matrix rooms): the key ring the Matrix side
    /// fills. `None`: media unencrypted.
    pub e2ee: Option<E2eeKeys>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            bind_ip: None,
            allowed_remote_nets: None,
            media_timeout: Duration::from_secs(15),
            e2ee: None,
        }
    }
}

/// Errors of [`connect`].
#[derive(Debug, thiserror::Error)]
pub enum LiveKitError {
    /// The signalling connection could not be opened or the server refused the join
    /// (bad token, unknown room, unreachable URL). The text says which.
    #[error("LiveKit signalling failed: {0} (check the SFU URL and the JWT from the authorisation service)")]
    Signal(String),
    /// The server's join answer was unusable.
    #[error("LiveKit server sent an unusable join response: {0}")]
    Protocol(String),
    /// Local network setup failed (no route to the SFU, cannot bind a UDP socket).
    #[error("network setup for LiveKit media failed: {0}")]
    Network(#[from] std::io::Error),
}

/// Media counters of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Opus packets sent to the SFU.
    pub packets_sent: u64,
    /// Per remote audio track (with the identity of its participant when known).
    pub tracks: Vec<ParticipantTrackStats>,
}

/// Statistics of one remote participant's audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantTrackStats {
    pub identity: Option<String>,
    pub stats: TrackStats,
}

#[derive(Debug, Default)]
struct Counters {
    packets_sent: AtomicU64,
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// A joined LiveKit call. Dropping it leaves the call too (without waiting).
pub struct LiveKitCall {
    commands: mpsc::Sender<Command>,
    room: Arc<Mutex<room::Room>>,
    playback: Arc<Mutex<audio::Playback>>,
    counters: Arc<Counters>,
}

impl LiveKitCall {
    /// Leaves the call (LeaveRequest CLIENT_INITIATED, then close) and stops the audio threads.
    pub async fn leave(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The other participants of the room.
    pub fn participants(&self) -> Vec<RemoteParticipant> {
        self.room
            .lock()
            .map(|r| r.participants())
            .unwrap_or_default()
    }

    /// Media counters so far.
    pub fn stats(&self) -> MediaStats {
        let tracks = self.playback.lock().map(|p| p.stats()).unwrap_or_default();
        let room = self.room.lock().ok();
        MediaStats {
            packets_sent: self.counters.packets_sent.load(Ordering::Relaxed),
            tracks: tracks
                .into_iter()
                .map(|stats| ParticipantTrackStats {
                    identity: room
                        .as_ref()
                        .and_then(|r| r.identity_of(&stats.participant_sid))
                        .map(str::to_owned),
                    stats,
                })
                .collect(),
        }
    }
}

/// Joins the LiveKit room `jwt` grants at `url` (`wss://…`, the SFU's signalling URL),
/// publishes `source` as a mono Opus microphone track and plays every remote audio track,
/// mixed, into `sink`. Returns once the server accepted the join; media comes up in the
/// background. Events (joins, leaves, speakers, the end of the call) arrive on the receiver.
pub async fn connect(
    url: &str,
    jwt: &Secret,
    opts: ConnectOptions,
    source: Box<dyn PcmSource>,
    sink: Box<dyn PcmSink>,
) -> Result<(LiveKitCall, mpsc::Receiver<LiveKitEvent>), LiveKitError> {
    session::start(url, jwt, opts, source, sink).await
}
