//! The signalling side of a call: server messages in, offers, answers, trickles and
//! subscription requests out (the v0 two-PC flow: AddTrack → TrackPublished → publisher offer
//! → answer; SFU offers → our answers; trickle both ways).
//!
//! Owns only message handling of a [`Session`]; the task and its end live in `session`.

use livekit_protocol as proto;
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;

use super::room::{leave_decision, LeaveDecision, LiveKitEvent};
use super::sdp::{candidate_json, first_mid, fix_rejected_mlines, parse_remote_candidate};
use super::session::{End, Publish, Recovery, Session, MIC_CID};

impl Session {
    pub(super) async fn on_signal(&mut self, msg: Response) -> Option<End> {
        match msg {
            Response::Answer(sd) => return self.on_publisher_answer(sd),
            Response::Offer(sd) => self.on_subscriber_offer(sd).await,
            Response::Trickle(t) => self.on_trickle(&t),
            Response::TrackPublished(tp) => return self.on_track_published(tp).await,
            Response::Update(update) => {
                let (events, video) = {
                    let mut room = self.room.lock().ok()?;
                    (
                        room.on_participant_update(&update.participants),
                        room.undeclined_video(&update.participants),
                    )
                };
                self.decline_video(video).await;
                let gone = proto::participant_info::State::Disconnected as i32;
                if let Ok(mut p) = self.playback.lock() {
                    for info in update.participants.iter().filter(|i| i.state == gone) {
                        p.remove_participant(&info.sid);
                    }
                }
                for e in events {
                    self.emit(e);
                }
            }
            Response::SpeakersChanged(s) => {
                let event = self.room.lock().ok()?.on_speakers_changed(&s.speakers);
                if let Some(e) = event {
                    self.emit(e);
                }
            }
            Response::Leave(leave) => {
                return Some(match leave_decision(&leave) {
                    LeaveDecision::Disconnect(reason) => End::Server(reason),
                    LeaveDecision::Resume => End::Recover(Recovery::Resume),
                    LeaveDecision::Rejoin => End::Recover(Recovery::Rejoin),
                });
            }
            Response::RequestResponse(r)
                if r.reason != proto::request_response::Reason::Ok as i32 =>
            {
                tracing::warn!("LiveKit refused request {}: {}", r.request_id, r.message);
            }
            Response::SubscriptionResponse(r) => {
                tracing::warn!(
                    "LiveKit could not subscribe to {}: error {}",
                    r.track_sid,
                    r.err
                );
            }
            Response::Join(_) | Response::Reconnect(_) => {
                tracing::debug!("unexpected join/reconnect response mid-call, ignored");
            }
            _ => {}
        }
        None
    }

    /// Unsubscribes from video tracks (audio-only device).
    pub(super) async fn decline_video(&self, track_sids: Vec<String>) {
        if track_sids.is_empty() {
            return;
        }
        tracing::debug!(?track_sids, "declining video tracks");
        self.client
            .send(Request::Subscription(proto::UpdateSubscription {
                track_sids,
                subscribe: false,
                ..Default::default()
            }))
            .await;
    }

    pub(super) async fn on_track_published(
        &mut self,
        tp: proto::TrackPublishedResponse,
    ) -> Option<End> {
        if tp.cid != MIC_CID || !matches!(self.publish, Publish::AwaitTrack) {
            return None;
        }
        self.published = Some(tp);
        self.send_publisher_offer(false).await
    }

    /// Offers the microphone line (adding it first if needed), with an ICE restart if asked.
    pub(super) async fn send_publisher_offer(&mut self, ice_restart: bool) -> Option<End> {
        let stream_id = self
            .published
            .as_ref()
            .and_then(|p| p.track.as_ref())
            .map(|t| t.stream.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "microphone".to_owned());
        let existing = match &self.publish {
            Publish::Ready { mid, .. } | Publish::AwaitAnswer { mid, .. } => Some(*mid),
            Publish::AwaitTrack | Publish::Failed => None,
        };
        let Some((mid, offer, pending)) =
            self.publisher
                .mic_offer(existing, &stream_id, MIC_CID, ice_restart)
        else {
            return None; // nothing changed: the current negotiation stands
        };
        let sdp = offer.to_sdp_string();
        self.offer_id += 1;
        let description = proto::SessionDescription {
            r#type: "offer".into(),
            sdp: sdp.clone(),
            id: self.offer_id,
            ..Default::default()
        };
        self.last_offer = Some(description.clone());
        self.client.send(Request::Offer(description)).await;
        self.publish = Publish::AwaitAnswer { pending, mid };
        let first = first_mid(&sdp).unwrap_or_else(|| mid.to_string());
        self.trickle(proto::SignalTarget::Publisher, &first).await;
        None
    }

    pub(super) fn on_publisher_answer(&mut self, sd: proto::SessionDescription) -> Option<End> {
        let Publish::AwaitAnswer { pending, mid } =
            std::mem::replace(&mut self.publish, Publish::Failed)
        else {
            tracing::debug!("publisher answer without a pending offer, ignored");
            return None;
        };
        let answer = match SdpAnswer::from_sdp_string(&sd.sdp) {
            Ok(a) => a,
            Err(e) => {
                return Some(End::MediaFailed(format!(
                    "publisher answer unparsable: {e}"
                )))
            }
        };
        if let Err(e) = self.publisher.rtc.sdp_api().accept_answer(pending, answer) {
            return Some(End::MediaFailed(format!("publisher answer refused: {e}")));
        }
        let pt = self.publisher.rtc.writer(mid).and_then(|w| {
            w.payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .map(|p| p.pt())
        });
        match pt {
            Some(pt) => {
                tracing::info!(%mid, ?pt, "microphone track negotiated");
                self.publish = Publish::Ready { mid, pt };
                if self.reconnecting {
                    self.reconnecting = false;
                    self.emit(LiveKitEvent::Reconnected);
                }
                None
            }
            None => Some(End::MediaFailed(
                "the SFU did not accept Opus for the microphone".into(),
            )),
        }
    }

    pub(super) async fn on_subscriber_offer(&mut self, sd: proto::SessionDescription) {
        let offer = match SdpOffer::from_sdp_string(&sd.sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("subscriber offer unparsable, ignored: {e}");
                return;
            }
        };
        let answer = match self.subscriber.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("subscriber offer refused: {e}");
                return;
            }
        };
        let sdp = fix_rejected_mlines(&answer.to_sdp_string(), &sd.sdp);
        let description = proto::SessionDescription {
            r#type: "answer".into(),
            sdp,
            id: sd.id,
            ..Default::default()
        };
        self.last_answer = Some(description.clone());
        self.client.send(Request::Answer(description)).await;
        if let Some(mid) = first_mid(&sd.sdp) {
            self.trickle(proto::SignalTarget::Subscriber, &mid).await;
        }
        self.drain_peers();
    }

    pub(super) async fn trickle(&self, target: proto::SignalTarget, mid: &str) {
        let peer = match target {
            proto::SignalTarget::Publisher => &self.publisher,
            proto::SignalTarget::Subscriber => &self.subscriber,
        };
        self.client
            .send(Request::Trickle(proto::TrickleRequest {
                candidate_init: candidate_json(&peer.candidate, mid),
                target: target as i32,
                r#final: false,
            }))
            .await;
    }

    pub(super) fn on_trickle(&mut self, t: &proto::TrickleRequest) {
        let peer = match proto::SignalTarget::try_from(t.target) {
            Ok(proto::SignalTarget::Publisher) => &mut self.publisher,
            Ok(proto::SignalTarget::Subscriber) => &mut self.subscriber,
            Err(_) => return,
        };
        match parse_remote_candidate(&t.candidate_init, self.opts.allowed_remote_nets.as_deref()) {
            Ok(c) => peer.rtc.add_remote_candidate(c),
            Err(why) => tracing::debug!("remote candidate skipped: {why}"),
        }
    }
}
