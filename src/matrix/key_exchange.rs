//! The media key exchange driver: runs a [`KeyExchange`] for one joined call and carries out
//! its actions — Olm-encrypted `io.element.call.encryption_keys` to-device messages through
//! matrix-sdk, and keys handed to the media side as [`MediaKeyUpdate`]s.
//!
//! Owns the task and the to-device sends; the rules are in [`super::media_keys`], the wire
//! format in [`super::key_message`]. Gets members from the sync loop's watch channel and key
//! messages from the sync loop's inbox. Never touches LiveKit: the daemon installs the updates.

use std::time::Instant;

use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedUserId};
use matrix_sdk::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::key_message::{key_content, KeySender, MediaKey, ReceivedKeyMessage, KEY_EVENT_TYPE};
use super::manager::now_ms;
use super::media_keys::{KeyAction, KeyExchange, Participant};
use super::members::CallMember;
use super::membership::rtc_identity;

/// A media key for the media side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKeyUpdate {
    /// Encrypt our media with this key from now on.
    Own { index: u8, key: MediaKey },
    /// The key `index` of the participant with this LiveKit identity (`@user:server:DEVICE`).
    Remote {
        identity: String,
        index: u8,
        key: MediaKey,
    },
}

/// Key messages queued between the sync loop and the exchange.
pub(crate) const INBOX: usize = 64;

pub(crate) struct KeyDriver {
    pub client: Client,
    pub room_id: String,
    pub user_id: String,
    pub device_id: String,
    pub members: watch::Receiver<Vec<CallMember>>,
    pub inbox: mpsc::Receiver<ReceivedKeyMessage>,
    pub updates: mpsc::Sender<MediaKeyUpdate>,
}

fn random_key() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
        // The OS random source failing is not recoverable; a predictable key is worse.
        panic!("the system random number generator failed");
    }
    key
}

fn participants(members: &[CallMember]) -> Vec<Participant> {
    members
        .iter()
        .map(|m| Participant {
            user_id: m.user_id.clone(),
            device_id: m.device_id.clone(),
            created_ts: m.created_ts,
        })
        .collect()
}

impl KeyDriver {
    /// Runs until aborted (the call is left) or the media side stops listening.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut kx = KeyExchange::new(
            &self.user_id,
            &self.device_id,
            &self.room_id,
            Box::new(random_key),
        );
        let actions = kx.memberships(Instant::now(), &participants(&self.members.borrow()));
        if !self.perform(&mut kx, actions).await {
            return;
        }
        loop {
            let deadline = kx.next_deadline().map(tokio::time::Instant::from_std);
            let actions = tokio::select! {
                changed = self.members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let members = participants(&self.members.borrow_and_update());
                    kx.memberships(Instant::now(), &members)
                }
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { return };
                    match kx.receive(&msg) {
                        Ok(actions) => {
                            debug!(sender = %msg.sender, "media key received");
                            actions
                        }
                        Err(reason) => {
                            warn!(sender = %msg.sender, "media key message dropped: {reason}");
                            continue;
                        }
                    }
                }
                _ = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => kx.tick(Instant::now()),
            };
            if !self.perform(&mut kx, actions).await {
                return;
            }
        }
    }

    /// Carries out the actions; `false` once the media side is gone.
    async fn perform(&self, kx: &mut KeyExchange, actions: Vec<KeyAction>) -> bool {
        for action in actions {
            let update = match action {
                KeyAction::Send { index, key, to } => {
                    let failed = self.send_key(index, &key, &to).await;
                    kx.key_sent(Instant::now(), index);
                    if !failed.is_empty() {
                        kx.send_failed(Instant::now(), index, &failed);
                    }
                    continue;
                }
                KeyAction::UseOwnKey { index, key } => {
                    info!(index, "using a new own media key");
                    MediaKeyUpdate::Own { index, key }
                }
                KeyAction::InstallRemote {
                    identity,
                    index,
                    key,
                } => {
                    info!(%identity, index, "media key of a call member");
                    MediaKeyUpdate::Remote {
                        identity,
                        index,
                        key,
                    }
                }
            };
            if self.updates.send(update).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends key `index` to the devices; returns those it could not reach.
    async fn send_key(
        &self,
        index: u8,
        key: &MediaKey,
        to: &[(String, String)],
    ) -> Vec<(String, String)> {
        let member_id = rtc_identity(&self.user_id, &self.device_id);
        let from = KeySender {
            room_id: &self.room_id,
            device_id: &self.device_id,
            member_id: &member_id,
        };
        let content = key_content(&from, index, key, now_ms());
        let enc = self.client.encryption();
        let mut devices = Vec::new();
        let mut failed = Vec::new();
        for (user, device) in to {
            let (Ok(u), d) = (
                OwnedUserId::try_from(user.as_str()),
                OwnedDeviceId::from(device.as_str()),
            ) else {
                failed.push((user.clone(), device.clone()));
                continue;
            };
            let mut found = enc.get_device(&u, &d).await.ok().flatten();
            if found.is_none() {
                // Not tracked yet (a new member): ask the server for the user's devices.
                if let Err(e) = enc.request_user_identity(&u).await {
                    debug!(user = %u, "device keys query failed: {e}");
                }
                found = enc.get_device(&u, &d).await.ok().flatten();
            }
            match found {
                Some(dev) => devices.push(dev),
                None => {
                    warn!(user = %u, device = %d, "no device keys for a call member yet; its media key is sent later");
                    failed.push((user.clone(), device.clone()));
                }
            }
        }
        if devices.is_empty() {
            return failed;
        }
        let raw = match serde_json::value::to_raw_value(&content) {
            Ok(r) => Raw::from_json(r),
            Err(e) => {
                warn!("cannot serialise the media key message: {e}");
                return to.to_vec();
            }
        };
        let refs: Vec<_> = devices.iter().collect();
        match enc
            .encrypt_and_send_raw_to_device(refs, KEY_EVENT_TYPE, raw, Default::default())
            .await
        {
            Ok(withheld) => {
                for (u, d) in withheld {
                    warn!(user = %u, device = %d, "the media key could not be encrypted for a device");
                    failed.push((u.to_string(), d.to_string()));
                }
                info!(
                    index,
                    devices = devices.len() - failed.len().min(devices.len()),
                    "media key sent"
                );
            }
            Err(e) => {
                warn!("sending the media key failed: {e}");
                failed.extend(
                    devices
                        .iter()
                        .map(|d| (d.user_id().to_string(), d.device_id().to_string())),
                );
            }
        }
        failed
    }
}
