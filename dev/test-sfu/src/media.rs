//! WebRTC sessions of one participant (sans-IO, str0m): the publisher PC (client offers, we
//! answer Opus only) and the subscriber PC (we offer data channels and one send-only audio line
//! per subscribed track). Owns SDP/ICE/negotiation state; must not touch sockets or room state.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use livekit_protocol as proto;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, Reliability};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc};

use crate::sdp;

/// Negotiation and candidate errors (the offending message is dropped, the session lives on).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("unparsable SDP from the client: {0}")]
    BadSdp(String),
    #[error("WebRTC session refused the description: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("answer for subscriber offer {0} but no offer is pending")]
    NoPendingOffer(u32),
}

/// Where the server's ICE candidates point and which client addresses are acceptable.
#[derive(Debug, Clone)]
pub struct NetPlan {
    /// The bound UDP socket.
    pub local: SocketAddr,
    /// Addresses announced as candidates (same port as `local`).
    pub advertise: Vec<IpAddr>,
}

impl NetPlan {
    fn candidates(&self) -> Vec<Candidate> {
        self.advertise
            .iter()
            .filter_map(|ip| {
                let addr = SocketAddr::new(*ip, self.local.port());
                let c = if *ip == self.local.ip() {
                    Candidate::host(addr, "udp")
                } else {
                    Candidate::server_reflexive(addr, self.local, "udp")
                };
                c.map_err(|e| tracing::warn!("cannot advertise {addr}: {e}"))
                    .ok()
            })
            .collect()
    }

    /// Client candidates outside 127.0.0.0/8 and the advertised /24 subnets are dropped.
    pub fn allows_remote(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(v4) = ip else {
            return false;
        };
        if v4.is_loopback() {
            return true;
        }
        self.advertise.iter().any(|a| match a {
            IpAddr::V4(a) => a.octets()[..3] == v4.octets()[..3],
            IpAddr::V6(_) => false,
        })
    }
}

/// One downstream copy of a published track.
#[derive(Debug)]
pub struct OutTrack {
    pub track: String,
    pub publisher: String,
    pub mid: Mid,
    /// Negotiated (answer applied): media may be written.
    pub ready: bool,
}

#[derive(Debug)]
enum SubOp {
    Add { track: String, publisher: String },
    Stop(Mid),
}

/// The two sessions of one participant.
pub struct Peer {
    pub publisher: Rtc,
    pub subscriber: Rtc,
    pub outs: Vec<OutTrack>,
    pending: Option<(u32, SdpPendingOffer)>,
    queue: Vec<SubOp>,
    offered_once: bool,
    next_offer_id: u32,
    publisher_trickled: bool,
    plan: NetPlan,
    /// The last publisher offer (to map media lines to the client's track ids).
    pub last_publisher_offer: String,
}

fn new_rtc(plan: &NetPlan, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true, false)
        .build(now);
    for c in plan.candidates() {
        rtc.add_local_candidate(c);
    }
    rtc
}

/// A `TrickleRequest` carrying one of our candidates, with `sdpMid` and `sdpMLineIndex` set.
fn trickle(c: &Candidate, mid: &str, target: proto::SignalTarget) -> proto::TrickleRequest {
    let line = c.to_sdp_string();
    let line = line.trim().trim_start_matches("a=");
    let init = serde_json::json!({"candidate": line, "sdpMid": mid, "sdpMLineIndex": 0});
    proto::TrickleRequest {
        candidate_init: init.to_string(),
        target: target as i32,
        r#final: false,
    }
}

impl Peer {
    pub fn new(plan: NetPlan, now: Instant) -> Self {
        Peer {
            publisher: new_rtc(&plan, now),
            subscriber: new_rtc(&plan, now),
            outs: Vec::new(),
            pending: None,
            queue: Vec::new(),
            offered_once: false,
            next_offer_id: 1,
            publisher_trickled: false,
            plan,
            last_publisher_offer: String::new(),
        }
    }

    /// Answer a publisher offer (same id); returns the answer and our trickles (first time only).
    pub fn answer_publisher(
        &mut self,
        offer: &proto::SessionDescription,
    ) -> Result<(proto::SessionDescription, Vec<proto::TrickleRequest>), MediaError> {
        let parsed =
            SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let answer = self.publisher.sdp_api().accept_offer(parsed)?;
        self.last_publisher_offer = offer.sdp.clone();
        let text = sdp::fix_rejected_lines(&offer.sdp, &answer.to_sdp_string());
        let mut trickles = Vec::new();
        if !self.publisher_trickled {
            self.publisher_trickled = true;
            let mid = sdp::first_mid(&text).unwrap_or_default();
            for c in self.plan.candidates() {
                trickles.push(trickle(&c, &mid, proto::SignalTarget::Publisher));
            }
        }
        Ok((
            proto::SessionDescription {
                r#type: "answer".into(),
                sdp: text,
                id: offer.id,
                ..Default::default()
            },
            trickles,
        ))
    }

    /// Queue a downstream track; it is offered with the next subscriber offer.
    pub fn subscribe(&mut self, track: String, publisher: String) {
        let known = self.outs.iter().any(|o| o.track == track)
            || self
                .queue
                .iter()
                .any(|q| matches!(q, SubOp::Add { track: t, .. } if *t == track));
        if !known {
            self.queue.push(SubOp::Add { track, publisher });
        }
    }

    /// Stop every downstream line of tracks published by `publisher`.
    pub fn drop_publisher(&mut self, publisher: &str) {
        self.queue
            .retain(|q| !matches!(q, SubOp::Add { publisher: p, .. } if p == publisher));
        let mids: Vec<Mid> = self
            .outs
            .iter()
            .filter(|o| o.publisher == publisher)
            .map(|o| o.mid)
            .collect();
        self.outs.retain(|o| o.publisher != publisher);
        self.queue.extend(mids.into_iter().map(SubOp::Stop));
    }

    /// The next subscriber offer (and, for the first one, our trickles), if one is due and none
    /// is outstanding.
    pub fn next_subscriber_offer(
        &mut self,
    ) -> Option<(proto::SessionDescription, Vec<proto::TrickleRequest>)> {
        if self.pending.is_some() || (self.offered_once && self.queue.is_empty()) {
            return None;
        }
        let mut api = self.subscriber.sdp_api();
        if !self.offered_once {
            api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ..Default::default()
            });
            api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
        }
        let mut added = Vec::new();
        for op in self.queue.drain(..) {
            match op {
                SubOp::Add { track, publisher } => {
                    let mid = api.add_media(
                        MediaKind::Audio,
                        Direction::SendOnly,
                        Some(format!("{publisher}|{track}")),
                        Some(track.clone()),
                        None,
                    );
                    added.push(OutTrack {
                        track,
                        publisher,
                        mid,
                        ready: false,
                    });
                }
                SubOp::Stop(mid) => api.stop_media(mid),
            }
        }
        let (offer, pending) = api.apply()?;
        self.outs.extend(added);
        let id = self.next_offer_id;
        self.next_offer_id += 1;
        self.pending = Some((id, pending));
        let text = offer.to_sdp_string();
        let mut trickles = Vec::new();
        if !self.offered_once {
            self.offered_once = true;
            let mid = sdp::first_mid(&text).unwrap_or_default();
            for c in self.plan.candidates() {
                trickles.push(trickle(&c, &mid, proto::SignalTarget::Subscriber));
            }
        }
        Some((
            proto::SessionDescription {
                r#type: "offer".into(),
                sdp: text,
                id,
                ..Default::default()
            },
            trickles,
        ))
    }

    /// Apply the client's answer to our subscriber offer.
    pub fn subscriber_answer(
        &mut self,
        answer: &proto::SessionDescription,
    ) -> Result<(), MediaError> {
        let Some((_, pending)) = self.pending.take() else {
            return Err(MediaError::NoPendingOffer(answer.id));
        };
        let parsed = SdpAnswer::from_sdp_string(&answer.sdp)
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
        self.subscriber.sdp_api().accept_answer(pending, parsed)?;
        for o in &mut self.outs {
            o.ready = true;
        }
        Ok(())
    }

    /// A client trickle: parse, filter (UDP IPv4 in the allowed nets) and hand to the right PC.
    pub fn remote_candidate(&mut self, req: &proto::TrickleRequest) {
        let Ok(init) = serde_json::from_str::<serde_json::Value>(&req.candidate_init) else {
            tracing::debug!("unparsable trickle ignored");
            return;
        };
        let Some(line) = init.get("candidate").and_then(|c| c.as_str()) else {
            return;
        };
        if line.is_empty() {
            return;
        }
        let Ok(c) = Candidate::from_sdp_string(line.trim_start_matches("a=")) else {
            tracing::debug!("candidate not understood: {line}");
            return;
        };
        if c.proto() != str0m::net::Protocol::Udp || !self.plan.allows_remote(c.addr().ip()) {
            tracing::debug!(
                "remote candidate {} outside the allowed nets, dropped",
                c.addr()
            );
            return;
        }
        if req.target == proto::SignalTarget::Subscriber as i32 {
            self.subscriber.add_remote_candidate(c);
        } else {
            self.publisher.add_remote_candidate(c);
        }
    }

    /// Where `track` is written on this subscriber session, if negotiated.
    pub fn out_mid(&self, track: &str) -> Option<Mid> {
        self.outs
            .iter()
            .find(|o| o.track == track && o.ready)
            .map(|o| o.mid)
    }

    pub fn close(&mut self) {
        self.publisher.disconnect();
        self.subscriber.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_advertised_subnets_are_allowed() {
        let plan = NetPlan {
            local: "10.77.3.1:7882".parse().unwrap(),
            advertise: vec!["10.77.3.1".parse().unwrap()],
        };
        assert!(plan.allows_remote("10.77.3.2".parse().unwrap()));
        assert!(plan.allows_remote("127.0.0.1".parse().unwrap()));
        assert!(!plan.allows_remote("192.168.1.20".parse().unwrap()));
        assert!(!plan.allows_remote("10.77.4.2".parse().unwrap()));
        assert!(!plan.allows_remote("::1".parse().unwrap()));
    }
}
