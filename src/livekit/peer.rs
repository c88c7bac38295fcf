//! One str0m peer connection and its UDP socket: the publisher or the subscriber PC.
//!
//! Owns driving the sans-IO `Rtc` (network input, timeouts, transmits) and handing its
//! events to the caller. Knows nothing of signalling messages or audio threads.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
