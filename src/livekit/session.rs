//! The task of one call: set-up, the loop that drives signalling, sockets, timers and the
//! microphone, and the call's end (leave, server disconnect, lost link, media failure).
//!
//! Owns the task and its state ([`Session`]). Message handling lives in `negotiation`, the
//! packet path in `media`, recovery in `recovery`; sockets and codecs in [`super::peer`] and
//! [`super::audio`]; room bookkeeping in [`super::room`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livekit_api::signal_client::{SignalClient, SignalEvent, SignalEvents, SignalOptions};
use livekit_protocol as proto;
use proto::signal_request::Message as Request;
use str0m::change::SdpPendingOffer;
use str0m::media::{Mid, Pt};
use tokio::sync::{mpsc, oneshot};

use crate::pcm::{PcmSink, PcmSource};
use crate::secret::Secret;

use super::audio::{AudioThreads, EncodedFrame, Playback};
use super::peer::Peer;
use super::room::{DisconnectReason, LiveKitEvent, Room};
use super::{net, Command, ConnectOptions, Counters, LiveKitCall, LiveKitError};

/// Client id of our one microphone track (AddTrackRequest.cid, SDP msid track id).
pub(super) const MIC_CID: &str = "mic0";
/// How long leaving waits for the audio threads.
const AUDIO_STOP_LIMIT: Duration = Duration::from_secs(2);
/// How long the ICE connection may stay lost before the call counts as failed.
const ICE_LOSS_LIMIT: Duration = Duration::from_secs(10);

pub(super) enum Publish {
    AwaitTrack,
    AwaitAnswer { pending: SdpPendingOffer, mid: Mid },
    Ready { mid: Mid, pt: Pt },
    Failed,
}

pub(super) enum End {
    Left(Option<oneshot::Sender<()>>),
    Server(DisconnectReason),
    Lost(String),
    MediaFailed(String),
    /// Not an end: the server or a lost link asks for a resume or a rejoin.
    Recover(Recovery),
}

/// How to get back into the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Same session: `reconnect=1&sid=`, ICE restart.
    Resume,
    /// New join, new participant sid, republish.
    Rejoin,
}

pub(super) struct Session {
    pub(super) url: String,
    pub(super) local_ip: IpAddr,
    pub(super) client: SignalClient,
    pub(super) signal_events: SignalEvents,
    pub(super) opts: ConnectOptions,
    pub(super) publisher: Peer,
    pub(super) subscriber: Peer,
    pub(super) publish: Publish,
    pub(super) offer_id: u32,
    pub(super) room: Arc<Mutex<Room>>,
    pub(super) playback: Arc<Mutex<Playback>>,
    pub(super) counters: Arc<Counters>,
    pub(super) events: mpsc::Sender<LiveKitEvent>,
    /// Subscriber mid → (track sid, participant sid).
    pub(super) mid_tracks: HashMap<Mid, (String, String)>,
    /// Marks server-injected frames (not encrypted) when E2EE is on.
    pub(super) sif_trailer: Vec<u8>,
    /// Random per-call prefix of E2EE frame IVs.
    pub(super) iv_prefix: u32,
    pub(super) frames_sent: u32,
    pub(super) rtp_time: u64,
    pub(super) ice_lost_since: Option<Instant>,
    pub(super) media_deadline: Instant,
    /// Kept for SyncState on resume.
    pub(super) last_offer: Option<proto::SessionDescription>,
    pub(super) last_answer: Option<proto::SessionDescription>,
    pub(super) published: Option<proto::TrackPublishedResponse>,
    /// Between `Reconnecting` and `Reconnected`.
    pub(super) reconnecting: bool,
}

fn random_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    // On failure the prefix stays 0: IVs are still unique per call through time and counter.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b)
}

pub(super) fn signal_options() -> SignalOptions {
    let mut options = SignalOptions::default();
    options.auto_subscribe = true;
    options.single_peer_connection = false;
    options.region_failover = false;
    options
}

pub(super) fn add_track_request(encrypted: bool) -> Request {
    let encryption = if encrypted {
        proto::encryption::Type::Gcm
    } else {
        proto::encryption::Type::None
    };
    Request::AddTrack(proto::AddTrackRequest {
        cid: MIC_CID.into(),
        name: "microphone".into(),
        r#type: proto::TrackType::Audio as i32,
        source: proto::TrackSource::Microphone as i32,
        disable_red: true,
        encryption: encryption as i32,
        ..Default::default()
    })
}

pub(super) async fn start(
    url: &str,
    jwt: &Secret,
    opts: ConnectOptions,
    source: Box<dyn PcmSource>,
    sink: Box<dyn PcmSink>,
) -> Result<(LiveKitCall, mpsc::Receiver<LiveKitEvent>), LiveKitError> {
    let bind_ip = match opts.bind_ip {
        Some(ip) => ip,
        None => net::route_source_ip(url).await?,
    };
    let (client, join, signal_events) =
        SignalClient::connect(url, jwt.expose(), signal_options(), None)
            .await
            .map_err(|e| LiveKitError::Signal(e.to_string()))?;
    let local_sid = match join.participant.as_ref() {
        Some(p) if p.sid.starts_with("PA_") => p.sid.clone(),
        _ => {
            client.close().await;
            return Err(LiveKitError::Protocol(
                "no participant sid starting with PA_".into(),
            ));
        }
    };
    tracing::info!(
        sid = %local_sid,
        others = join.other_participants.len(),
        subscriber_primary = join.subscriber_primary,
        "joined LiveKit room"
    );

    let now = Instant::now();
    let publisher = Peer::new(bind_ip, now)?;
    let subscriber = Peer::new(bind_ip, now)?;

    let (mut room, initial) = Room::from_join(&join);
    let video = room.undeclined_video(&join.other_participants);
    let (events_tx, events_rx) = mpsc::channel(64);
    for e in initial {
        let _ = events_tx.try_send(e);
    }
    let room = Arc::new(Mutex::new(room));
    let playback = Arc::new(Mutex::new(Playback::default()));
    let counters = Arc::new(Counters::default());

    client.send(add_track_request(opts.e2ee.is_some())).await;

    let (mic_tx, mic_rx) = mpsc::channel(8);
    let audio = AudioThreads::start(source, sink, mic_tx, playback.clone())?;
    let (commands_tx, commands_rx) = mpsc::channel(4);
    let session = Session {
        url: url.to_owned(),
        local_ip: bind_ip,
        media_deadline: now + opts.media_timeout,
        last_offer: None,
        last_answer: None,
        published: None,
        reconnecting: false,
        sif_trailer: join.sif_trailer.clone(),
        iv_prefix: random_u32(),
        frames_sent: 0,
        client,
        signal_events,
        opts,
        publisher,
        subscriber,
        publish: Publish::AwaitTrack,
        offer_id: 0,
        room: room.clone(),
        playback: playback.clone(),
        counters: counters.clone(),
        events: events_tx,
        mid_tracks: HashMap::new(),
        rtp_time: 0,
        ice_lost_since: None,
    };
    session.decline_video(video).await;
    tokio::spawn(session.run(commands_rx, mic_rx, audio));
    Ok((
        LiveKitCall {
            commands: commands_tx,
            room,
            playback,
            counters,
        },
        events_rx,
    ))
}

impl Session {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut mic: mpsc::Receiver<EncodedFrame>,
        audio: AudioThreads,
    ) {
        let mut pub_buf = vec![0u8; 2048];
        let mut sub_buf = vec![0u8; 2048];
        let mut mic_open = true;
        self.drain_peers();
        let end = loop {
            // Fresh handles each turn: a rejoin replaces the peers and their sockets.
            let pub_sock = self.publisher.socket.clone();
            let sub_sock = self.subscriber.socket.clone();
            let wake = self.publisher.timeout().min(self.subscriber.timeout());
            let outcome = tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Leave(done)) => Some(End::Left(Some(done))),
                    None => Some(End::Left(None)),
                },
                ev = self.signal_events.recv() => match ev {
                    Some(SignalEvent::Message(msg)) => self.on_signal(*msg).await,
                    Some(SignalEvent::Close(reason)) => {
                        tracing::warn!("LiveKit signalling lost: {reason}");
                        Some(End::Recover(Recovery::Resume))
                    }
                    None => Some(End::Recover(Recovery::Resume)),
                },
                r = pub_sock.recv_from(&mut pub_buf) => {
                    if let Ok((n, from)) = r {
                        self.publisher.receive(&pub_buf[..n], from, Instant::now());
                    }
                    None
                }
                r = sub_sock.recv_from(&mut sub_buf) => {
                    if let Ok((n, from)) = r {
                        self.subscriber.receive(&sub_buf[..n], from, Instant::now());
                    }
                    None
                }
                frame = mic.recv(), if mic_open => {
                    match frame {
                        Some(f) => self.send_frame(f),
                        None => mic_open = false,
                    }
                    None
                }
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            let outcome = match outcome {
                // A leave asked for during a recovery ends it at once.
                Some(End::Recover(kind)) => tokio::select! {
                    end = self.recover(kind) => end,
                    cmd = commands.recv() => Some(End::Left(cmd.map(|Command::Leave(done)| done))),
                },
                other => other,
            };
            if let Some(end) = outcome {
                break end;
            }
            let now = Instant::now();
            self.publisher.tick(now);
            self.subscriber.tick(now);
            self.drain_peers();
            if let Some(end) = self.check_media(now) {
                break end;
            }
        };
        self.finish(end, audio).await;
    }

    pub(super) fn emit(&self, event: LiveKitEvent) {
        if let Err(e) = self.events.try_send(event) {
            tracing::warn!("LiveKit event dropped (receiver full or gone): {e}");
        }
    }

    fn check_media(&mut self, now: Instant) -> Option<End> {
        let primary = &self.subscriber;
        if !primary.connected && !self.publisher.connected && now > self.media_deadline {
            return Some(End::MediaFailed(format!(
                "no peer connection came up within {:?}",
                self.opts.media_timeout
            )));
        }
        match self.ice_lost_since {
            Some(since) if now - since > ICE_LOSS_LIMIT => Some(End::MediaFailed(format!(
                "media connection lost for more than {ICE_LOSS_LIMIT:?}"
            ))),
            _ => None,
        }
    }

    async fn finish(mut self, end: End, audio: AudioThreads) {
        let mut done = None;
        let event = match end {
            End::Left(d) => {
                done = d;
                self.send_leave().await;
                None
            }
            End::MediaFailed(why) => {
                tracing::warn!("LiveKit media failed: {why}");
                self.send_leave().await;
                Some(DisconnectReason::MediaFailed(why))
            }
            End::Server(reason) => Some(reason),
            End::Lost(why) => Some(DisconnectReason::SignalLost(why)),
            End::Recover(kind) => Some(DisconnectReason::SignalLost(format!("{kind:?} failed"))),
        };
        self.client.close().await;
        self.publisher.rtc.disconnect();
        self.subscriber.rtc.disconnect();
        // Each audio thread finishes its current 20 ms frame; a device stuck in a blocking
        // read or write must not hold the leave up.
        let stopping = tokio::task::spawn_blocking(move || audio.stop());
        if tokio::time::timeout(AUDIO_STOP_LIMIT, stopping)
            .await
            .is_err()
        {
            tracing::warn!("audio threads did not stop within {AUDIO_STOP_LIMIT:?}; left behind");
        }
        if let Ok(mut p) = self.playback.lock() {
            p.clear();
        }
        if let Some(reason) = event {
            tracing::info!("LiveKit call ended: {reason:?}");
            self.emit(LiveKitEvent::Disconnected { reason });
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    async fn send_leave(&self) {
        self.client
            .send(Request::Leave(proto::LeaveRequest {
                can_reconnect: false,
                reason: proto::DisconnectReason::ClientInitiated as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                regions: None,
            }))
            .await;
    }
}
