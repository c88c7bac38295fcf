//! LiveKit media end-to-end encryption as Element Call uses it (per-participant AES-128-GCM
//! frame keys distributed over Matrix to-device messages).
//!
//! Owns the frame format and the key ring; sans-IO. The keys themselves come from the Matrix
//! side through [`E2eeKeys`] (this module never talks to a homeserver).
//!
//! Frame: `header (Opus: the 1-byte TOC, in clear) ‖ ciphertext ‖ tag(16) ‖ IV(12) ‖ 12 ‖ key
//! index`; AAD = header. Key = HKDF-SHA-256(IKM = raw key, salt = "LKFrameEncryptionKey",
//! info = 128 zero bytes) → AES-128. Frames ending in the server's `sif_trailer` are
//! server-injected and passed through without decryption.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::hkdf::{Salt, HKDF_SHA256};

const SALT: &[u8] = b"LKFrameEncryptionKey";
const INFO: [u8; 128] = [0; 128];
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Opus TOC byte stays in clear.
const AUDIO_HEADER: usize = 1;

/// A derived frame key (never printed).
#[derive(Clone)]
struct FrameKey(LessSafeKey);

impl FrameKey {
    fn derive(raw: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(raw);
        let okm = prk
            .expand(&[&INFO], &AES_128_GCM)
            .expect("16-byte output is within HKDF limits");
        FrameKey(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

#[derive(Default)]
struct KeyRing {
    local: Option<(u8, FrameKey)>,
    remote: HashMap<String, HashMap<u8, FrameKey>>,
}

/// The media keys of a call: ours (for sending) and each remote participant's, by LiveKit
/// identity (`@user:server:DEVICE`) and key index. Shared: the Matrix side sets keys while the
/// call runs; clones refer to the same ring.
#[derive(Clone, Default)]
pub struct E2eeKeys {
    ring: Arc<Mutex<KeyRing>>,
}

impl std::fmt::Debug for E2eeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("E2eeKeys([redacted])")
    }
}

/// Why a received frame could not be decrypted (it is then dropped and concealed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("frame too short or without a 12-byte IV trailer")]
    Malformed,
    #[error("no key {index} for {identity}")]
    MissingKey { identity: String, index: u8 },
    #[error("authentication failed (wrong key)")]
    Auth,
}

impl E2eeKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets our sending key (raw bytes as exchanged over Matrix) and its index; frames sent
    /// from now on use it.
    pub fn set_local_key(&self, index: u8, raw: &[u8]) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.local = Some((index, FrameKey::derive(raw)));
        }
    }

    /// Sets a remote participant's key at `index`. The participant need not be in the room
    /// yet: the key waits here for its first frames.
    pub fn set_remote_key(&self, identity: &str, index: u8, raw: &[u8]) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.remote
                .entry(identity.to_owned())
                .or_default()
                .insert(index, FrameKey::derive(raw));
        }
    }

    /// Whether a sending key is set.
    pub fn has_local_key(&self) -> bool {
        self.ring.lock().map(|r| r.local.is_some()).unwrap_or(false)
    }

    /// Encrypts one Opus frame with our current key and `iv` (unique per key). `None` while no
    /// sending key is set (the frame must then not be sent).
    pub fn encrypt(&self, frame: &[u8], iv: [u8; IV_LEN]) -> Option<Vec<u8>> {
        let (index, key) = self.ring.lock().ok()?.local.clone()?;
        let header = AUDIO_HEADER.min(frame.len());
        let mut out = Vec::with_capacity(frame.len() + TAG_LEN + IV_LEN + 2);
        out.extend_from_slice(&frame[header..]);
        key.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(&frame[..header]),
                &mut out,
            )
            .ok()?;
        let mut framed = Vec::with_capacity(header + out.len() + IV_LEN + 2);
        framed.extend_from_slice(&frame[..header]);
        framed.extend_from_slice(&out);
        framed.extend_from_slice(&iv);
        framed.push(IV_LEN as u8);
        framed.push(index);
        Some(framed)
    }

    /// Decrypts a frame from `identity`. Server-injected frames (ending in `sif_trailer`) come
    /// back without the trailer, undecrypted.
    pub fn decrypt(
        &self,
        identity: &str,
        frame: &[u8],
        sif_trailer: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        if !sif_trailer.is_empty() && frame.ends_with(sif_trailer) {
            return Ok(frame[..frame.len() - sif_trailer.len()].to_vec());
        }
        let n = frame.len();
        if n < AUDIO_HEADER + TAG_LEN + IV_LEN + 2 || usize::from(frame[n - 2]) != IV_LEN {
            return Err(DecryptError::Malformed);
        }
        let index = frame[n - 1];
        let key = self
            .ring
            .lock()
            .ok()
            .and_then(|r| r.remote.get(identity)?.get(&index).cloned())
            .ok_or_else(|| DecryptError::MissingKey {
                identity: identity.to_owned(),
                index,
            })?;
        let iv_start = n - 2 - IV_LEN;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&frame[iv_start..n - 2]);
        let header = &frame[..AUDIO_HEADER];
        let mut body = frame[AUDIO_HEADER..iv_start].to_vec();
        let plain = key
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(header),
                &mut body,
            )
            .map_err(|_| DecryptError::Auth)?;
        let mut out = Vec::with_capacity(AUDIO_HEADER + plain.len());
        out.extend_from_slice(header);
        out.extend_from_slice(plain);
        Ok(out)
    }
}

/// Builds a frame IV from a per-call random prefix, the RTP timestamp and a frame counter, as
/// LiveKit's senders do (only uniqueness per key matters; receivers read it from the trailer).
pub fn frame_iv(prefix: u32, rtp_time: u32, counter: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[..4].copy_from_slice(&prefix.to_be_bytes());
    iv[4..8].copy_from_slice(&rtp_time.to_be_bytes());
    iv[8..].copy_from_slice(&counter.to_be_bytes());
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; 16] = *b"0123456789abcdef";
    const KEY_B: [u8; 16] = *b"fedcba9876543210";

    fn pair() -> (E2eeKeys, E2eeKeys) {
        let alice = E2eeKeys::new();
        alice.set_local_key(3, &KEY_A);
        let bob = E2eeKeys::new();
        bob.set_remote_key("@alice:hs:A", 3, &KEY_A);
        (alice, bob)
    }

    #[test]
    fn frames_round_trip_with_toc_in_clear_and_livekit_trailer() {
        let (alice, bob) = pair();
        let opus = [0x78u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let iv = frame_iv(0xdead_beef, 960, 1);
        let sealed = alice.encrypt(&opus, iv).unwrap();
        assert_eq!(sealed.len(), opus.len() + TAG_LEN + IV_LEN + 2);
        assert_eq!(sealed[0], 0x78, "TOC byte stays in clear");
        assert_ne!(&sealed[1..opus.len()], &opus[1..], "payload is encrypted");
        let n = sealed.len();
        assert_eq!(&sealed[n - 14..n - 2], &iv);
        assert_eq!(sealed[n - 2], 12);
        assert_eq!(sealed[n - 1], 3);
        assert_eq!(bob.decrypt("@alice:hs:A", &sealed, &[]).unwrap(), opus);
    }

    #[test]
    fn wrong_or_missing_keys_and_tampering_are_refused() {
        let (alice, bob) = pair();
        let sealed = alice.encrypt(&[0x78, 1, 2, 3], frame_iv(1, 2, 3)).unwrap();
        assert_eq!(
            bob.decrypt("@carol:hs:C", &sealed, &[]),
            Err(DecryptError::MissingKey {
                identity: "@carol:hs:C".into(),
                index: 3
            })
        );
        let eve = E2eeKeys::new();
        eve.set_remote_key("@alice:hs:A", 3, &KEY_B);
        assert_eq!(
            eve.decrypt("@alice:hs:A", &sealed, &[]),
            Err(DecryptError::Auth)
        );
        let mut tampered = sealed.clone();
        tampered[0] ^= 1; // the clear header is authenticated too
        assert_eq!(
            bob.decrypt("@alice:hs:A", &tampered, &[]),
            Err(DecryptError::Auth)
        );
        assert_eq!(
            bob.decrypt("@alice:hs:A", &[1, 2, 3], &[]),
            Err(DecryptError::Malformed)
        );
    }

    #[test]
    fn no_sending_key_means_nothing_to_send() {
        let keys = E2eeKeys::new();
        assert!(!keys.has_local_key());
        assert_eq!(keys.encrypt(&[1, 2, 3], [0; 12]), None);
    }

    #[test]
    fn key_rotation_keeps_old_index_decryptable() {
        let (alice, bob) = pair();
        let old = alice.encrypt(&[0x78, 9, 9], frame_iv(1, 1, 1)).unwrap();
        alice.set_local_key(4, &KEY_B);
        bob.set_remote_key("@alice:hs:A", 4, &KEY_B);
        let new = alice.encrypt(&[0x78, 8, 8], frame_iv(1, 2, 2)).unwrap();
        assert_eq!(*new.last().unwrap(), 4);
        assert_eq!(bob.decrypt("@alice:hs:A", &old, &[]).unwrap(), [0x78, 9, 9]);
        assert_eq!(bob.decrypt("@alice:hs:A", &new, &[]).unwrap(), [0x78, 8, 8]);
    }

    #[test]
    fn server_injected_frames_pass_without_decryption() {
        let keys = E2eeKeys::new();
        let sif = b"LKROCKS";
        let frame = [0xf8, 0xff, 0xfe, b'L', b'K', b'R', b'O', b'C', b'K', b'S'];
        assert_eq!(
            keys.decrypt("@x:hs:X", &frame, sif).unwrap(),
            [0xf8, 0xff, 0xfe]
        );
    }

    #[test]
    fn debug_output_hides_keys() {
        let (alice, _) = pair();
        assert_eq!(format!("{alice:?}"), "E2eeKeys([redacted])");
    }
}
