//! One str0m peer connection and its UDP socket: the publisher or the subscriber PC.
//!
//! Owns driving the sans-IO `Rtc` (network input, timeouts, transmits) and handing its
//! events to the caller. Knows nothing of signalling messages or audio threads.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::net::bind_media_socket;

/// One peer connection with full ICE and Opus only.
pub struct Peer {
    pub rtc: Rtc,
    pub socket: Arc<tokio::net::UdpSocket>,
    local: SocketAddr,
    pub candidate: Candidate,
    timeout: Instant,
    /// `Event::Connected` seen (ICE and DTLS up).
    pub connected: bool,
}

impl Peer {
    pub fn new(ip: IpAddr, now: Instant) -> io::Result<Self> {
        let socket = bind_media_socket(ip)?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            // Our jitter buffer reorders; str0m hands packets over as they arrive.
            .set_reordering_size_audio(0)
            .build(now);
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        rtc.add_local_candidate(candidate.clone());
        Ok(Self {
            rtc,
            socket: Arc::new(socket),
            local,
            candidate,
            timeout: now,
            connected: false,
        })
    }

    /// An offer with our send-only mono Opus microphone line (msid `<stream_id> <cid>`),
    /// adding the line unless `existing` names it, with an ICE restart if asked. `None` when
    /// nothing changed.
    pub fn mic_offer(
        &mut self,
        existing: Option<Mid>,
        stream_id: &str,
        cid: &str,
        ice_restart: bool,
    ) -> Option<(Mid, SdpOffer, SdpPendingOffer)> {
        let mut api = self.rtc.sdp_api();
        let mid = match existing {
            Some(mid) => mid,
            None => api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(stream_id.to_owned()),
                Some(cid.to_owned()),
                None,
            ),
        };
        if ice_restart {
            api.ice_restart(true);
        }
        let (offer, pending) = api.apply()?;
        Some((mid, offer, pending))
    }

    pub fn timeout(&self) -> Instant {
        self.timeout
    }

    /// Feeds one received datagram.
    pub fn receive(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let Ok(contents) = data.try_into() else {
            return; // not STUN/DTLS/RTP: ignore
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input) {
            if let Err(e) = self.rtc.handle_input(input) {
                tracing::debug!("peer connection input: {e}");
            }
        }
    }

    /// Advances time if a timeout is due.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.timeout {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!("peer connection timeout: {e}");
            }
        }
    }

    /// Sends what str0m wants sent and returns its events, until it asks for a timeout.
    pub fn drain(&mut self, events: &mut Vec<Event>) {
        // Bounded: str0m yields a timeout once its queues are empty.
        for _ in 0..10_000 {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                        tracing::debug!("udp send to {}: {e}", t.destination);
                    }
                }
                Ok(Output::Event(e)) => {
                    if matches!(e, Event::Connected) {
                        self.connected = true;
                    }
                    events.push(e);
                }
                Err(e) => {
                    tracing::warn!("peer connection failed: {e}");
                    self.timeout = Instant::now() + Duration::from_millis(100);
                    return;
                }
            }
        }
        self.timeout = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livekit::sdp::fix_rejected_mlines;

    const LIBWEBRTC_OFFER: &str = include_str!("testdata/libwebrtc-offer.sdp");

    fn peer() -> Peer {
        Peer::new(IpAddr::from([127, 0, 0, 1]), Instant::now()).unwrap()
    }

    #[tokio::test]
    async fn mic_offer_is_one_sendonly_opus_line_with_fec_audio_level_and_msid() {
        let mut p = peer();
        let (mid, offer, _pending) = p.mic_offer(None, "PA_me", "mic0", false).unwrap();
        let sdp = offer.to_sdp_string();
        let mlines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(mlines.len(), 1, "{sdp}");
        assert!(mlines[0].starts_with("m=audio "), "{sdp}");
        assert!(sdp.contains(&format!("a=mid:{mid}")));
        assert!(sdp.contains("a=sendonly"));
        assert!(sdp.contains("a=msid:PA_me mic0"), "{sdp}");
        assert!(sdp.contains("opus/48000/2"));
        assert!(sdp.contains("useinbandfec=1"), "{sdp}");
        assert!(sdp.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
        assert!(!sdp.contains("H264") && !sdp.contains("VP8"));
        // An unchanged session needs no new offer; an ICE restart does.
        assert!(p.mic_offer(Some(mid), "PA_me", "mic0", false).is_none());
        assert!(p.mic_offer(Some(mid), "PA_me", "mic0", true).is_some());
    }

    #[tokio::test]
    async fn answer_to_a_libwebrtc_offer_with_video_and_data_is_parsable_by_libwebrtc() {
        let mut p = peer();
        let offer = SdpOffer::from_sdp_string(LIBWEBRTC_OFFER).unwrap();
        let answer = p.rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        // str0m rejects the video lines without a format (the pitfall)...
        assert!(answer
            .lines()
            .any(|l| l.starts_with("m=video 0") && l.split_whitespace().count() == 3));
        // ...and after the fix-up every m-line has one, the audio lines keep Opus.
        let fixed = fix_rejected_mlines(&answer, LIBWEBRTC_OFFER);
        let mlines: Vec<&str> = fixed.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(mlines.len(), 7, "{fixed}");
        for line in &mlines {
            assert!(line.split_whitespace().count() >= 4, "{line}");
        }
        assert!(
            mlines[0].starts_with("m=audio 9 UDP/TLS/RTP/SAVPF 111"),
            "{fixed}"
        );
        assert!(mlines[6].starts_with("m=application 9"), "{fixed}");
        // (str0m's own parser would still refuse it for want of an a=rtpmap; libwebrtc, the
        // peer that reads our answers, accepts a rejected line with a bare format.)
    }
}
