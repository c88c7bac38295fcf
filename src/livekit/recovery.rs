//! Getting back into the room after the signalling link is lost or the server asks for it:
//! resume (same session, `reconnect=1&sid=`, ICE restart) and, when that is refused or fails,
//! a full rejoin (new join, new peer connections, republish).
//!
//! Owns only the recovery sequence of a [`Session`]; the regular flow stays in `session`.

use std::time::{Duration, Instant};

use livekit_api::signal_client::{SignalClient, SignalError, SignalEvent};
use livekit_protocol as proto;
use proto::signal_request::Message as Request;

use super::peer::Peer;
use super::room::LiveKitEvent;
use super::session::{add_track_request, signal_options, End, Publish, Recovery, Session};

/// Total time a recovery may take before the call counts as lost. LiveKit keeps a vanished
/// participant for about 15 s, so a resume must succeed well within that.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
const RESUME_LIMIT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(300);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

impl Session {
    /// Resumes or rejoins; `None` when the call goes on, else how it ended.
    pub(super) async fn recover(&mut self, kind: Recovery) -> Option<End> {
        if !self.reconnecting {
            self.reconnecting = true;
            self.emit(LiveKitEvent::Reconnecting);
        }
        let started = Instant::now();
        if kind == Recovery::Resume {
            match self.resume(started + RESUME_LIMIT).await {
                Ok(end) => return end,
                Err(why) => tracing::warn!("LiveKit resume failed ({why}); joining again"),
            }
        }
        match self.rejoin(started + RECOVERY_LIMIT).await {
            Ok(()) => None,
            Err(why) => Some(End::Lost(why)),
        }
    }

    async fn resume(&mut self, deadline: Instant) -> Result<Option<End>, String> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self
                .client
                .restart(proto::ReconnectReason::RrSignalDisconnected)
                .await
            {
                Ok(_) => break,
                Err(SignalError::LeaveRequest { reason, action }) => {
                    return Err(format!("server refused: {reason:?}/{action:?}"));
                }
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::info!("LiveKit resume attempt failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        tracing::info!("LiveKit signalling resumed");
        // Closing the old transport may have queued a stale Close; keep real messages.
        let mut queued = Vec::new();
        while let Ok(ev) = self.signal_events.try_recv() {
            if let SignalEvent::Message(m) = ev {
                queued.push(*m);
            }
        }
        self.send_sync_state().await;
        let published = !matches!(self.publish, Publish::AwaitTrack | Publish::Failed);
        if published {
            if let Some(end) = self.send_publisher_offer(true).await {
                return Ok(Some(end));
            }
        }
        self.client.set_reconnected().await;
        if !published {
            self.reconnecting = false;
            self.emit(LiveKitEvent::Reconnected);
        }
        for m in queued {
            if let Some(end) = self.on_signal(m).await {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    async fn send_sync_state(&self) {
        let subscribed: Vec<String> = self
            .playback
            .lock()
            .map(|p| p.stats().into_iter().map(|t| t.track_sid).collect())
            .unwrap_or_default();
        let sync = proto::SyncState {
            answer: self.last_answer.clone(),
            offer: self.last_offer.clone(),
            subscription: Some(proto::UpdateSubscription {
                track_sids: subscribed,
                subscribe: true,
                ..Default::default()
            }),
            publish_tracks: self.published.iter().cloned().collect(),
            ..Default::default()
        };
        self.client.send(Request::SyncState(sync)).await;
    }

    async fn rejoin(&mut self, deadline: Instant) -> Result<(), String> {
        // The refreshed token (if the server sent one) is the one to use now.
        let token = self.client.token();
        self.client.close().await;
        let mut backoff = FIRST_BACKOFF;
        let (client, join, events) = loop {
            match SignalClient::connect(&self.url, &token, signal_options(), None).await {
                Ok(joined) => break joined,
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::info!("LiveKit rejoin attempt failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(format!("rejoin failed: {e}")),
            }
        };
        let sid = join
            .participant
            .as_ref()
            .map(|p| p.sid.clone())
            .filter(|s| s.starts_with("PA_"))
            .ok_or("rejoin answered without a participant sid")?;
        tracing::info!(%sid, "LiveKit rejoined");
        let now = Instant::now();
        self.publisher.rtc.disconnect();
        self.subscriber.rtc.disconnect();
        self.publisher = Peer::new(self.local_ip, now).map_err(|e| e.to_string())?;
        self.subscriber = Peer::new(self.local_ip, now).map_err(|e| e.to_string())?;
        self.client = client;
        self.signal_events = events;
        self.publish = Publish::AwaitTrack;
        self.published = None;
        self.last_offer = None;
        self.last_answer = None;
        self.mid_tracks.clear();
        self.sif_trailer = join.sif_trailer.clone();
        self.ice_lost_since = None;
        self.media_deadline = now + self.opts.media_timeout;
        if let Ok(mut p) = self.playback.lock() {
            p.clear();
        }
        let (events, video) = match self.room.lock() {
            Ok(mut room) => {
                let events = room.reset_for_rejoin(&join);
                (events, room.undeclined_video(&join.other_participants))
            }
            Err(_) => (Vec::new(), Vec::new()),
        };
        self.decline_video(video).await;
        for e in events {
            self.emit(e);
        }
        self.client
            .send(add_track_request(self.opts.e2ee.is_some()))
            .await;
        // Reconnected follows once the microphone is negotiated again.
        Ok(())
    }
}
