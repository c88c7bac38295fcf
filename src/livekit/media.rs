//! The media side of a call's task: microphone frames out through the publisher PC
//! (encrypted when E2EE is on), subscriber PC events in (new remote tracks, Opus packets into
//! the playout, ICE state).
//!
//! Owns only the packet path of a [`Session`]; decoding and playout live in `audio`.

use std::time::Instant;

use str0m::media::{Frequency, MediaKind, MediaTime};
use str0m::Event;

use crate::pcm::FRAME_SAMPLES;

use super::audio::EncodedFrame;
use super::e2ee::frame_iv;
use super::sdp::parse_livekit_msid;
use super::session::{Publish, Session};

impl Session {
    pub(super) fn send_frame(&mut self, frame: EncodedFrame) {
        let rtp_time = MediaTime::new(self.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_time += FRAME_SAMPLES as u64;
        let Publish::Ready { mid, pt } = self.publish else {
            return;
        };
        if !self.publisher.connected {
            return;
        }
        let Some(writer) = self.publisher.rtc.writer(mid) else {
            return;
        };
        let (level, voice) = frame.level;
        let payload = match &self.opts.e2ee {
            None => frame.opus,
            Some(keys) => {
                self.frames_sent = self.frames_sent.wrapping_add(1);
                let iv = frame_iv(self.iv_prefix, rtp_time.numer() as u32, self.frames_sent);
                // Without our key yet nothing may be sent in clear.
                let Some(sealed) = keys.encrypt(&frame.opus, iv) else {
                    return;
                };
                sealed
            }
        };
        match writer
            .audio_level(level, voice)
            .write(pt, Instant::now(), rtp_time, payload)
        {
            Ok(()) => {
                self.counters
                    .packets_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("microphone frame not sent: {e}"),
        }
    }

    pub(super) fn drain_peers(&mut self) {
        let mut events = Vec::new();
        self.publisher.drain(&mut events);
        for e in events.drain(..) {
            if let Event::IceConnectionStateChange(state) = e {
                tracing::debug!(?state, "publisher ICE");
            }
        }
        self.subscriber.drain(&mut events);
        for e in events {
            self.on_subscriber_event(e);
        }
    }

    pub(super) fn on_subscriber_event(&mut self, event: Event) {
        match event {
            Event::MediaAdded(added) if added.kind == MediaKind::Audio => {
                let Some(media) = self.subscriber.rtc.media(added.mid) else {
                    return;
                };
                let stream = media.stream_id().to_owned();
                let (participant, track) = match parse_livekit_msid(&stream) {
                    Some((p, t)) => (p.to_owned(), t.to_owned()),
                    None => (String::new(), media.track_id().to_owned()),
                };
                tracing::info!(mid = %added.mid, %participant, %track, "remote audio track");
                if let Ok(mut p) = self.playback.lock() {
                    p.add_track(&track, &participant);
                }
                self.mid_tracks.insert(added.mid, (track, participant));
            }
            Event::MediaData(data) => {
                let Some((track, participant)) = self.mid_tracks.get(&data.mid) else {
                    return;
                };
                let payload = match &self.opts.e2ee {
                    None => Ok(data.data.to_vec()),
                    Some(keys) => {
                        let identity = self
                            .room
                            .lock()
                            .ok()
                            .and_then(|r| r.identity_of(participant).map(str::to_owned))
                            .unwrap_or_default();
                        keys.decrypt(&identity, &data.data, &self.sif_trailer)
                    }
                };
                if let Ok(mut p) = self.playback.lock() {
                    match payload {
                        Ok(payload) => p.insert(track, **data.seq_range.start(), payload),
                        Err(e) => {
                            tracing::debug!("undecryptable frame on {track}: {e}");
                            p.note_undecryptable(track);
                        }
                    }
                }
            }
            Event::IceConnectionStateChange(state) => {
                use str0m::IceConnectionState as S;
                tracing::debug!(?state, "subscriber ICE");
                match state {
                    S::Disconnected => {
                        self.ice_lost_since.get_or_insert_with(Instant::now);
                    }
                    S::Connected | S::Completed => self.ice_lost_since = None,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
