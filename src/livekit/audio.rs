//! The two audio threads of a call and the shared playback state between them and the
//! network task.
//!
//! Owns: the capture thread (reads the [`PcmSource`], encodes Opus, hands packets to the
//! network task) and the playback thread (pulls one mixed frame per sink write, at the
//! sink's pace). Knows nothing of signalling or peer connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::pcm::{PcmError, PcmSink, PcmSource, FRAME_SAMPLES};

use super::codec::{audio_level, DecodeStats, MicEncoder, TrackPlayout};
use super::mixer::Mixer;

/// One encoded microphone frame.
#[derive(Debug)]
pub struct EncodedFrame {
    pub opus: Vec<u8>,
    /// RFC 6464 level (negative dBov) and voice activity.
    pub level: (i8, bool),
}

struct RemoteTrack {
    participant_sid: String,
    playout: TrackPlayout,
    packets: u64,
    undecryptable: u64,
    decrypted_any: bool,
    undecryptable_late: u64,
}

/// Decode and playout statistics of one remote track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStats {
    pub participant_sid: String,
    pub track_sid: String,
    pub packets_received: u64,
    pub late_packets: u64,
    /// Packets dropped because they could not be decrypted (E2EE key missing or wrong).
    pub undecryptable: u64,
    /// Of those, the ones after the first packet that did decrypt: failures once the key
    /// exchange had settled (the ones before are packets that came before the key).
    pub undecryptable_after_first_key: u64,
    pub decode: DecodeStats,
}

/// Every remote audio track being played, and the mixer.
#[derive(Default)]
pub struct Playback {
    tracks: BTreeMap<String, RemoteTrack>,
    mixer: Mixer,
    frames: Vec<Vec<i16>>,
}

impl Playback {
    /// Starts playing a remote track (idempotent).
    pub fn add_track(&mut self, track_sid: &str, participant_sid: &str) {
        if self.tracks.contains_key(track_sid) {
            return;
        }
        match TrackPlayout::new() {
            Ok(playout) => {
                self.tracks.insert(
                    track_sid.to_owned(),
                    RemoteTrack {
                        participant_sid: participant_sid.to_owned(),
                        playout,
                        packets: 0,
                        undecryptable: 0,
                        decrypted_any: false,
                        undecryptable_late: 0,
                    },
                );
            }
            Err(e) => tracing::error!("cannot decode track {track_sid}: {e}"),
        }
    }

    pub fn remove_participant(&mut self, participant_sid: &str) {
        self.tracks
            .retain(|_, t| t.participant_sid != participant_sid);
    }

    pub fn clear(&mut self) {
        self.tracks.clear();
    }

    pub fn insert(&mut self, track_sid: &str, seq: u64, payload: Vec<u8>) {
        if let Some(t) = self.tracks.get_mut(track_sid) {
            t.packets += 1;
            t.decrypted_any = true;
            t.playout.insert(seq, payload);
        }
    }

    /// Counts a received packet that could not be decrypted (it is then concealed).
    pub fn note_undecryptable(&mut self, track_sid: &str) {
        if let Some(t) = self.tracks.get_mut(track_sid) {
            t.packets += 1;
            t.undecryptable += 1;
            if t.decrypted_any {
                t.undecryptable_late += 1;
            }
        }
    }

    /// The next 20 ms of all tracks, mixed.
    pub fn next_frame(&mut self, out: &mut [i16]) {
        self.frames
            .resize_with(self.tracks.len(), || vec![0; FRAME_SAMPLES]);
        for (track, frame) in self.tracks.values_mut().zip(self.frames.iter_mut()) {
            frame.resize(out.len(), 0);
            track.playout.next_frame(frame);
        }
        self.mixer.mix(
            self.frames[..self.tracks.len()].iter().map(Vec::as_slice),
            out,
        );
    }

    pub fn stats(&self) -> Vec<TrackStats> {
        self.tracks
            .iter()
            .map(|(sid, t)| TrackStats {
                participant_sid: t.participant_sid.clone(),
                track_sid: sid.clone(),
                packets_received: t.packets,
                late_packets: t.playout.jitter_stats().late,
                undecryptable: t.undecryptable,
                undecryptable_after_first_key: t.undecryptable_late,
                decode: t.playout.stats(),
            })
            .collect()
    }
}

/// The running audio threads; stopped by [`AudioThreads::stop`] or on drop of the flag.
pub struct AudioThreads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl AudioThreads {
    /// Starts capture (encoded frames to `mic_tx`) and playback (from `playback`).
    pub fn start(
        mut source: Box<dyn PcmSource>,
        mut sink: Box<dyn PcmSink>,
        mic_tx: mpsc::Sender<EncodedFrame>,
        playback: Arc<Mutex<Playback>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let capture_stop = stop.clone();
        let capture = std::thread::Builder::new()
            .name("lk-capture".into())
            .spawn(move || {
                let mut encoder = match MicEncoder::new() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!("microphone encoder: {e}");
                        return;
                    }
                };
                let mut frame = vec![0i16; FRAME_SAMPLES];
                while !capture_stop.load(Ordering::Relaxed) {
                    match source.read_frame(&mut frame) {
                        Ok(()) => {}
                        Err(PcmError::Ended) => break,
                        Err(e) => {
                            tracing::warn!("microphone stopped: {e}");
                            break;
                        }
                    }
                    let level = audio_level(&frame);
                    match encoder.encode(&frame) {
                        Ok(opus) => {
                            // The network task is gone or far behind: drop, never block capture.
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                mic_tx.try_send(EncodedFrame { opus, level })
                            {
                                break;
                            }
                        }
                        Err(e) => tracing::warn!("encoding a microphone frame: {e}"),
                    }
                }
            })?;
        let playback_stop = stop.clone();
        let player = std::thread::Builder::new()
            .name("lk-playback".into())
            .spawn(move || {
                let mut frame = vec![0i16; FRAME_SAMPLES];
                while !playback_stop.load(Ordering::Relaxed) {
                    match playback.lock() {
                        Ok(mut p) => p.next_frame(&mut frame),
                        Err(_) => break,
                    }
                    match sink.write_frame(&frame) {
                        Ok(()) => {}
                        Err(PcmError::Ended) => break,
                        Err(e) => {
                            tracing::warn!("playback stopped: {e}");
                            break;
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            handles: vec![capture, player],
        })
    }

    /// Asks both threads to stop and waits for them (each finishes its current frame).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playback_mixes_tracks_and_reports_per_track_stats() {
        let mut enc = MicEncoder::new().unwrap();
        let mut p = Playback::default();
        p.add_track("TR_a", "PA_a");
        p.add_track("TR_b", "PA_b");
        p.add_track("TR_a", "PA_a");
        let mut out = vec![0i16; FRAME_SAMPLES];
        let frame: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| ((i as f32 * 0.0576).sin() * 8000.0) as i16)
            .collect();
        for seq in 0..10u64 {
            let pkt = enc.encode(&frame).unwrap();
            p.insert("TR_a", seq, pkt);
            p.insert("TR_unknown", seq, vec![1, 2, 3]);
            p.next_frame(&mut out);
        }
        let stats = p.stats();
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].track_sid, "TR_a");
        assert_eq!(stats[0].packets_received, 10);
        assert_eq!(stats[0].decode.frames_decoded, 8);
        assert_eq!(stats[1].packets_received, 0);
        assert!(out.iter().any(|&s| s.abs() > 1000));
        p.remove_participant("PA_a");
        assert_eq!(p.stats().len(), 1);
    }
}
