//! Who gets which media key when (sans-IO): matrix-js-sdk `RTCEncryptionManager` behaviour for
//! Element Call's per-participant media keys over to-device messages.
//!
//! Owns our outbound key, its rotation and the keys received from others until their call
//! membership is known. Fed with the call's memberships, received key messages and the clock;
//! returns [`KeyAction`]s that the driver ([`super::key_exchange`]) carries out. No I/O, no
//! clock of its own (time is a parameter), randomness from the generator it is given.
//!
//! Rules (js-sdk, checked against `RTCEncryptionManager.ts`):
//! - the first key has index 0 and is used at once; it goes to every other member;
//! - a member left (or re-joined with a new membership): a new key, index + 1 mod 256, goes to
//!   all current members and is used [`USE_KEY_DELAY`] after its send finished;
//! - a member joined: if our key is younger than [`ROTATION_GRACE`] the joiner gets it, else
//!   rotate as for a leave;
//! - while a new key waits for its use, further membership changes are handled once it is in
//!   use (js-sdk serialises its roll-outs);
//! - a received key is for (to-device sender, claimed device) and is handed over once that
//!   device's membership is in the call (js-sdk `keysWithoutMatchingRTCMembership`); the LiveKit
//!   identity is `@user:server:DEVICE`. The later received key for an index wins.
//!
//! Beyond js-sdk: a failed send is retried with the current key a few times (no rotation).

use std::time::{Duration, Instant};

use super::key_message::{parse_key_message, KeyRejected, MediaKey, ReceivedKeyMessage};
use super::membership::rtc_identity;

/// How long a new key is distributed before we encrypt with it (js-sdk `useKeyDelay`, as
/// `MatrixRTCSession.joinRoomSession` sets it).
pub const USE_KEY_DELAY: Duration = Duration::from_millis(1000);
/// A key younger than this is given to joiners instead of rotating (js-sdk
/// `keyRotationGracePeriodMs`).
pub const ROTATION_GRACE: Duration = Duration::from_secs(10);
/// Keys kept for devices whose membership has not appeared (oldest dropped first).
const MAX_BUFFERED: usize = 64;
/// Resend attempts of a failed send, and the first wait (doubling).
const SEND_RETRIES: u32 = 5;
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// One call membership as far as keys are concerned. A re-join is a new `created_ts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant {
    pub user_id: String,
    pub device_id: String,
    pub created_ts: u64,
}

impl Participant {
    fn same_device(&self, user: &str, device: &str) -> bool {
        self.user_id == user && self.device_id == device
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Send our key `index` to these (user, device)s, Olm-encrypted; report failures with
    /// [`KeyExchange::send_failed`].
    Send {
        index: u8,
        key: MediaKey,
        to: Vec<(String, String)>,
    },
    /// Encrypt our media with this key from now on.
    UseOwnKey { index: u8, key: MediaKey },
    /// A remote participant's key (LiveKit `identity`).
    InstallRemote {
        identity: String,
        index: u8,
        key: MediaKey,
    },
}

struct Outbound {
    index: u8,
    key: MediaKey,
    created: Instant,
    shared_with: Vec<Participant>,
}

/// The key exchange of one joined call.
pub struct KeyExchange {
    own_user: String,
    own_device: String,
    room_id: String,
    random_key: Box<dyn FnMut() -> [u8; 16] + Send>,
    outbound: Option<Outbound>,
    /// A rotated key and when it comes into use.
    pending_use: Option<Instant>,
    /// Memberships changed while a key was pending.
    recheck: bool,
    members: Vec<Participant>,
    buffered: Vec<(String, String, u8, MediaKey)>,
    /// Failed sends to retry, and when.
    retries: Vec<(Participant, Instant)>,
    /// Failed sends of the current key per member.
    failures: Vec<(Participant, u32)>,
}

impl KeyExchange {
    /// `random_key` makes new 16-byte keys (a CSPRNG in the daemon).
    pub fn new(
        own_user: &str,
        own_device: &str,
        room_id: &str,
        random_key: Box<dyn FnMut() -> [u8; 16] + Send>,
    ) -> Self {
        Self {
            own_user: own_user.to_owned(),
            own_device: own_device.to_owned(),
            room_id: room_id.to_owned(),
            random_key,
            outbound: None,
            pending_use: None,
            recheck: false,
            members: Vec::new(),
            buffered: Vec::new(),
            retries: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Our current sending key (index, key) once there is one.
    pub fn own_key(&self) -> Option<(u8, &MediaKey)> {
        self.outbound.as_ref().map(|o| (o.index, &o.key))
    }

    /// The call's current memberships (ours may be among them; it is ignored).
    pub fn memberships(&mut self, now: Instant, members: &[Participant]) -> Vec<KeyAction> {
        self.members = members
            .iter()
            .filter(|m| !m.same_device(&self.own_user, &self.own_device))
            .cloned()
            .collect();
        let mut out = self.flush_buffered();
        if self.pending_use.is_some() {
            self.recheck = true;
        } else {
            out.extend(self.rollout(now));
        }
        out
    }

    /// A received key message (already known to be `io.element.call.encryption_keys`).
    pub fn receive(&mut self, msg: &ReceivedKeyMessage) -> Result<Vec<KeyAction>, KeyRejected> {
        let k = parse_key_message(msg, &self.room_id)?;
        if k.user_id == self.own_user && k.device_id == self.own_device {
            return Err(KeyRejected::FromSelf);
        }
        if self
            .members
            .iter()
            .any(|m| m.same_device(&k.user_id, &k.device_id))
        {
            return Ok(vec![install(&k.user_id, &k.device_id, k.index, k.key)]);
        }
        if self.buffered.len() >= MAX_BUFFERED {
            self.buffered.remove(0);
        }
        self.buffered.push((k.user_id, k.device_id, k.index, k.key));
        Ok(Vec::new())
    }

    /// Sending key `index` to these devices failed: they get the current key again later
    /// (a few times, with growing waits).
    pub fn send_failed(&mut self, now: Instant, index: u8, failed: &[(String, String)]) {
        let Some(out) = self.outbound.as_mut().filter(|o| o.index == index) else {
            return;
        };
        for (user, device) in failed {
            let Some(pos) = out
                .shared_with
                .iter()
                .position(|p| p.same_device(user, device))
            else {
                continue;
            };
            let who = out.shared_with.remove(pos);
            let count = match self.failures.iter_mut().find(|(p, _)| *p == who) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.failures.push((who.clone(), 1));
                    1
                }
            };
            if count <= SEND_RETRIES {
                self.retries
                    .push((who, now + RETRY_WAIT * (1 << (count - 1))));
            }
        }
    }

    /// The send of key `index` finished (reached the server, or failed): a rotated key comes
    /// into use [`USE_KEY_DELAY`] from now, as js-sdk waits after its send.
    pub fn key_sent(&mut self, now: Instant, index: u8) {
        if self.outbound.as_ref().is_some_and(|o| o.index == index) {
            if let Some(at) = self.pending_use.as_mut() {
                *at = (*at).max(now + USE_KEY_DELAY);
            }
        }
    }

    /// When [`Self::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retries
            .iter()
            .map(|(_, at)| *at)
            .chain(self.pending_use)
            .min()
    }

    /// Timers: a pending key comes into use, failed sends are retried.
    pub fn tick(&mut self, now: Instant) -> Vec<KeyAction> {
        let mut out = Vec::new();
        if self.pending_use.is_some_and(|at| now >= at) {
            self.pending_use = None;
            if let Some(o) = &self.outbound {
                out.push(KeyAction::UseOwnKey {
                    index: o.index,
                    key: o.key.clone(),
                });
            }
            if std::mem::take(&mut self.recheck) {
                out.extend(self.rollout(now));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(_, at)| now >= *at);
        self.retries = later;
        let to: Vec<Participant> = due
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| self.members.contains(p))
            .collect();
        if let (false, Some(o)) = (to.is_empty(), self.outbound.as_mut()) {
            o.shared_with.extend(to.iter().cloned());
            out.push(KeyAction::Send {
                index: o.index,
                key: o.key.clone(),
                to: to.into_iter().map(|p| (p.user_id, p.device_id)).collect(),
            });
        }
        out
    }

    fn flush_buffered(&mut self) -> Vec<KeyAction> {
        let members = &self.members;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.buffered)
            .into_iter()
            .partition(|(u, d, _, _)| members.iter().any(|m| m.same_device(u, d)));
        self.buffered = waiting;
        ready
            .into_iter()
            .map(|(u, d, index, key)| install(&u, &d, index, key))
            .collect()
    }

    fn new_key(&mut self, now: Instant) -> &mut Outbound {
        let index = self
            .outbound
            .as_ref()
            .map(|o| o.index.wrapping_add(1))
            .unwrap_or(0);
        let key = MediaKey::new((self.random_key)());
        self.outbound.insert(Outbound {
            index,
            key,
            created: now,
            shared_with: Vec::new(),
        })
    }

    /// js-sdk `rolloutOutboundKey`.
    fn rollout(&mut self, now: Instant) -> Vec<KeyAction> {
        let mut out = Vec::new();
        if self.outbound.is_none() {
            let o = self.new_key(now);
            out.push(KeyAction::UseOwnKey {
                index: o.index,
                key: o.key.clone(),
            });
        }
        let members = self.members.clone();
        let o = self.outbound.as_mut().expect("created above");
        // A member that re-joined (same device, new membership) must get the key again.
        o.shared_with.retain(|s| {
            !members
                .iter()
                .any(|m| m.same_device(&s.user_id, &s.device_id) && m.created_ts != s.created_ts)
        });
        let any_left = o.shared_with.iter().any(|s| !members.contains(s));
        let joined: Vec<Participant> = members
            .iter()
            .filter(|m| !o.shared_with.contains(m))
            .cloned()
            .collect();
        let (rotate, to) = if any_left {
            (true, members)
        } else if joined.is_empty() {
            return out;
        } else if now.saturating_duration_since(o.created) < ROTATION_GRACE {
            (false, joined)
        } else {
            (true, members)
        };
        if rotate {
            self.new_key(now);
            self.pending_use = Some(now + USE_KEY_DELAY);
            self.retries.clear();
            self.failures.clear();
        }
        let o = self.outbound.as_mut().expect("present");
        o.shared_with.extend(to.iter().cloned());
        if !to.is_empty() {
            out.push(KeyAction::Send {
                index: o.index,
                key: o.key.clone(),
                to: to.into_iter().map(|p| (p.user_id, p.device_id)).collect(),
            });
        }
        out
    }
}

fn install(user: &str, device: &str, index: u8, key: MediaKey) -> KeyAction {
    KeyAction::InstallRemote {
        identity: rtc_identity(user, device),
        index,
        key,
    }
}

#[cfg(test)]
#[path = "media_keys_tests.rs"]
mod tests;
