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
    /// Host candidates, one per advertised address, all on the bound port. (An advertised
    /// address may differ from the bound one, e.g. QEMU's 10.0.2.2 for the host's loopback.)
    fn candidates(&self) -> Vec<Candidate> {
        self.advertise
            .iter()
            .filter_map(|ip| {
                let addr = SocketAddr::new(*ip, self.local.port());
                Candidate::host(addr, "udp")
                    .map_err(|e| tracing::warn!("cannot advertise {addr}: {e}"))
                    .ok()
            })
            .collect()
    }

    /// The advertised address a datagram from `source` was sent to, as str0m must see it
    /// (ICE-lite only answers checks addressed to one of its host candidates): the bound
    /// address if advertised, else the advertised address in the sender's /24, else the first.
    pub fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        let port = self.local.port();
        if self.advertise.contains(&self.local.ip()) || self.advertise.is_empty() {
            return self.local;
        }
        let same_net = self.advertise.iter().find(|a| match (a, source.ip()) {
            (IpAddr::V4(a), IpAddr::V4(s)) => a.octets()[..3] == s.octets()[..3],
            _ => false,
        });
        SocketAddr::new(*same_net.unwrap_or(&self.advertise[0]), port)
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
    /// An answer to one of our subscriber offers was applied.
    negotiated: bool,
    ice_restart: bool,
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
            negotiated: false,
            ice_restart: false,
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

    /// After a resume: the next subscriber offer restarts ICE. An unanswered offer is dropped
    /// and its new lines are offered again.
    pub fn restart_ice(&mut self) {
        if self.pending.take().is_some() {
            let unanswered: Vec<OutTrack> = self.outs.extract_if(.., |o| !o.ready).collect();
            for o in unanswered.into_iter().rev() {
                self.queue.insert(
                    0,
                    SubOp::Add {
                        track: o.track,
                        publisher: o.publisher,
                    },
                );
            }
        }
        if !self.negotiated {
            // The dropped offer was the first one: its data channels must be offered again.
            self.offered_once = false;
        }
        self.ice_restart = true;
    }

    /// The next subscriber offer (and, for the first one, our trickles), if one is due and none
    /// is outstanding.
    pub fn next_subscriber_offer(
        &mut self,
    ) -> Option<(proto::SessionDescription, Vec<proto::TrickleRequest>)> {
        if self.pending.is_some()
            || (self.offered_once && self.queue.is_empty() && !self.ice_restart)
        {
            return None;
        }
        let mut api = self.subscriber.sdp_api();
        if std::mem::take(&mut self.ice_restart) {
            api.ice_restart(true);
        }
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
        self.negotiated = true;
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
        let src = "10.77.3.2:5000".parse().unwrap();
        assert_eq!(plan.destination_for(src), plan.local);
    }

    #[test]
    fn qemu_style_advertised_address_is_the_destination() {
        let plan = NetPlan {
            local: "127.0.0.1:7882".parse().unwrap(),
            advertise: vec!["10.0.2.2".parse().unwrap()],
        };
        let src = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(plan.destination_for(src), "10.0.2.2:7882".parse().unwrap());
        assert_eq!(
            plan.candidates()[0].addr(),
            "10.0.2.2:7882".parse().unwrap()
        );
    }
}
