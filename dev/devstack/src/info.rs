//! The stack JSON file (`stack.json`): the one place where the dev stack publishes what it
//! started. Owns the serde schema only; it does not start anything and does no I/O beyond
//! reading/writing that one file.
//!
//! The keys are a stable interface (documented in the crate doc): add keys, never rename or
//! remove them without bumping [`SCHEMA_VERSION`].

use std::path::{Path, PathBuf};

use matrix_intercom::secret::{write_private_atomic, Secret};
use serde::{Deserialize, Serialize};

/// Value of [`StackInfo::version`]; bumped on any incompatible change of the keys.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything a test or the demo needs to talk to the running dev stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackInfo {
    /// Schema version, currently [`SCHEMA_VERSION`].
    pub version: u32,
    /// Working directory (Synapse DB, config, logs).
    pub dir: PathBuf,
    /// Matrix server name of the homeserver (`localhost`).
    pub server_name: String,
    /// Client-server API base URL, `http://127.0.0.1:<synapse-port>` (no trailing slash).
    pub homeserver_url: String,
    /// Synapse's shared registration secret, to register more users with
    /// [`crate::matrix::register_user`].
    pub registration_shared_secret: Secret,
    /// Synapse's log file.
    pub synapse_log: PathBuf,
    /// The three accounts.
    pub users: Users,
    /// The door room (unencrypted): residents and the device are joined.
    pub room_id: String,
    /// Alias of [`Self::room_id`], `#door:<server_name>`.
    pub room_alias: String,
    /// The encrypted door room, present only with `--encrypted-room`.
    #[serde(default)]
    pub encrypted_room_id: Option<String>,
    /// Alias of [`Self::encrypted_room_id`], `#door-encrypted:<server_name>`.
    #[serde(default)]
    pub encrypted_room_alias: Option<String>,
    /// The LiveKit SFU as clients see it, and the API key pair of this run.
    pub livekit: LiveKit,
    /// Base URL of the token service (what Synapse advertises as `livekit_service_url`).
    pub token_service_url: String,
    /// Admin (Twirp) URL of the SFU, as given to the token service.
    pub sfu_admin_url: String,
    /// Process ids; `None` for a helper whose binary was missing (not started).
    pub pids: Pids,
}

/// The accounts registered on the homeserver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Users {
    /// The intercom device's account; no session is left open for it (it logs in itself).
    pub intercom: User,
    /// Resident who created the rooms (room admin, power level 100).
    pub alice: User,
    /// Second resident.
    pub bob: User,
}

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Full Matrix user id, `@alice:localhost`.
    pub user_id: String,
    /// Password (random, kept across runs that reuse the same `--dir`).
    pub password: Secret,
    /// Access token of a session opened for this run (residents only).
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Device id of that session (residents only).
    #[serde(default)]
    pub device_id: Option<String>,
}

/// LiveKit connection facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveKit {
    /// Signalling URL clients connect to, `ws://<sfu-advertise>:<sfu-port>`.
    pub url: String,
    /// API key of this run.
    pub key: String,
    /// API secret of this run.
    pub secret: Secret,
}

/// Process ids of everything the dev stack runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pids {
    /// The `mi-devstack` process itself (SIGTERM it to stop everything).
    pub devstack: u32,
    /// Synapse.
    pub synapse: u32,
    /// `mi-token-service`, if started.
    #[serde(default)]
    pub token_service: Option<u32>,
    /// `mi-test-sfu`, if started.
    #[serde(default)]
    pub sfu: Option<u32>,
}

/// Reading or writing the stack file failed.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read the stack file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the stack file {path} is not valid stack JSON ({source}); is it from another mi-devstack version?")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the stack file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StackInfo {
    /// Reads and parses a stack file.
    pub fn read(path: &Path) -> Result<Self, InfoError> {
        let bytes = std::fs::read(path).map_err(|source| InfoError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| InfoError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the stack file atomically with mode 0600 (it holds passwords and tokens).
    pub fn write(&self, path: &Path) -> Result<(), InfoError> {
        let mut json = serde_json::to_vec_pretty(self).expect("StackInfo always serializes");
        json.push(b'\n');
        write_private_atomic(path, &json).map_err(|source| InfoError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> StackInfo {
        let user = |name: &str, token: bool| User {
            user_id: format!("@{name}:localhost"),
            password: Secret::new(format!("pw-{name}")),
            access_token: token.then(|| Secret::new(format!("tok-{name}"))),
            device_id: token.then(|| format!("DEV{name}")),
        };
        StackInfo {
            version: SCHEMA_VERSION,
            dir: "/tmp/x".into(),
            server_name: "localhost".into(),
            homeserver_url: "http://127.0.0.1:8008".into(),
            registration_shared_secret: Secret::new("SECRET-shared"),
            synapse_log: "/tmp/x/synapse.log".into(),
            users: Users {
                intercom: user("intercom", false),
                alice: user("alice", true),
                bob: user("bob", true),
            },
            room_id: "!r:localhost".into(),
            room_alias: "#door:localhost".into(),
            encrypted_room_id: None,
            encrypted_room_alias: None,
            livekit: LiveKit {
                url: "ws://127.0.0.1:7880".into(),
                key: "k".into(),
                secret: Secret::new("s"),
            },
            token_service_url: "http://127.0.0.1:8090".into(),
            sfu_admin_url: "http://127.0.0.1:7880".into(),
            pids: Pids {
                devstack: 1,
                synapse: 2,
                token_service: None,
                sfu: Some(4),
            },
        }
    }

    #[test]
    fn file_round_trips_with_mode_0600_and_plain_secret_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.json");
        let info = sample();
        info.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["users"]["alice"]["access_token"], "tok-alice");
        assert_eq!(raw["livekit"]["secret"], "s");
        assert_eq!(raw["pids"]["token_service"], serde_json::Value::Null);
        assert_eq!(StackInfo::read(&path).unwrap(), info);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let text = format!("{:?}", sample());
        for secret in ["pw-alice", "tok-bob", "SECRET-shared", "\"s\""] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}
