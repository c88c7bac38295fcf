//! The stored Matrix session: `<state_dir>/session.json` (homeserver, user, device id and
//! tokens) and the location of the matrix-sdk store (`<state_dir>/store`).
//!
//! Owns reading, writing, moving aside and deleting that file; it never talks to the network.
//! A corrupted file is never overwritten: it is renamed to `session.json.corrupt-<unix secs>`
//! and reported.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SessionError;
use crate::secret::{write_private_atomic, Secret};

pub const SESSION_FILE: &str = "session.json";
pub const STORE_DIR: &str = "store";

/// One logged-in device. Restarting with it keeps the device id (and its keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSession {
    pub homeserver: String,
    pub user_id: String,
    pub device_id: String,
    pub access_token: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
}

pub fn session_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SESSION_FILE)
}

pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE_DIR)
}

/// Whether a session file exists (valid or not). `check-config` uses this to warn about a
/// password left in the config.
pub fn session_exists(state_dir: &Path) -> bool {
    session_path(state_dir).exists()
}

/// Creates the state directory (mode 0700) if needed.
pub fn ensure_state_dir(state_dir: &Path) -> Result<(), SessionError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| SessionError::Io {
            path: state_dir.to_owned(),
            source,
        })
}

/// Loads the session. `Ok(None)` if there is none; a file that does not parse is moved aside
/// and reported as [`SessionError::Corrupt`].
pub fn load(state_dir: &Path) -> Result<Option<StoredSession>, SessionError> {
    let path = session_path(state_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SessionError::Io { path, source }),
    };
    match parse(&bytes) {
        Ok(s) => Ok(Some(s)),
        Err(reason) => {
            let moved_to = move_aside(&path)?;
            Err(SessionError::Corrupt {
                path,
                moved_to,
                reason,
            })
        }
    }
}

fn parse(bytes: &[u8]) -> Result<StoredSession, String> {
    let s: StoredSession = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if s.access_token.expose().is_empty() {
        return Err("empty access_token".into());
    }
    if s.device_id.is_empty() {
        return Err("empty device_id".into());
    }
    if !s.user_id.starts_with('@') || !s.user_id.contains(':') {
        return Err(format!("user_id {:?} is not a Matrix user id", s.user_id));
    }
    Ok(s)
}

fn move_aside(path: &Path) -> Result<PathBuf, SessionError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut target = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.corrupt-{secs}-{n}", path.display()));
        n += 1;
    }
    fs::rename(path, &target).map_err(|source| SessionError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(target)
}

/// Writes the session atomically with mode 0600.
pub fn save(state_dir: &Path, session: &StoredSession) -> Result<(), SessionError> {
    ensure_state_dir(state_dir)?;
    let path = session_path(state_dir);
    let json = serde_json::to_vec_pretty(session).map_err(|e| SessionError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    write_private_atomic(&path, &json).map_err(|source| SessionError::Io { path, source })
}

/// Deletes the session file and the matrix-sdk store (after logout, or before a fresh login
/// whose new device must not meet the old device's crypto store).
pub fn remove(state_dir: &Path) -> Result<(), SessionError> {
    let path = session_path(state_dir);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SessionError::Io { path, source }),
    }
    remove_store(state_dir)
}

pub fn remove_store(state_dir: &Path) -> Result<(), SessionError> {
    let store = store_path(state_dir);
    match fs::remove_dir_all(&store) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SessionError::Io {
            path: store,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> StoredSession {
        StoredSession {
            homeserver: "http://127.0.0.1:8008".into(),
            user_id: "@door:example.org".into(),
            device_id: "DOORDEVICE".into(),
            access_token: Secret::new("syt_secret_token"),
            refresh_token: Some(Secret::new("syr_refresh")),
        }
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!session_exists(dir.path()));
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), &sample()).unwrap();
        assert!(session_exists(dir.path()));
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        let mode = fs::metadata(session_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn debug_output_hides_tokens() {
        let text = format!("{:?}", sample());
        assert!(!text.contains("syt_secret_token"), "{text}");
        assert!(!text.contains("syr_refresh"), "{text}");
    }

    #[test]
    fn corrupted_file_is_moved_aside_with_its_bytes_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        fs::write(&path, b"{\"homeserver\": \"http://x\", trunc").unwrap();
        let err = load(dir.path()).unwrap_err();
        let SessionError::Corrupt { moved_to, .. } = &err else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert!(!path.exists(), "the corrupted file must not stay in place");
        assert_eq!(
            fs::read(moved_to).unwrap(),
            b"{\"homeserver\": \"http://x\", trunc"
        );
        assert!(moved_to
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("session.json.corrupt-"));
        assert!(err.to_string().contains("matrix-intercom login"), "{err}");
        // A second corrupt file in the same second does not overwrite the first one.
        fs::write(&path, b"[]").unwrap();
        let SessionError::Corrupt {
            moved_to: second, ..
        } = load(dir.path()).unwrap_err()
        else {
            panic!("expected Corrupt");
        };
        assert_ne!(&second, moved_to);
        assert_eq!(fs::read(second).unwrap(), b"[]");
    }

    #[test]
    fn semantically_invalid_session_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample();
        s.access_token = Secret::new("");
        save(dir.path(), &s).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(SessionError::Corrupt { .. })
        ));
    }

    #[test]
    fn remove_deletes_file_and_store() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        fs::create_dir_all(store_path(dir.path()).join("x")).unwrap();
        remove(dir.path()).unwrap();
        assert!(!session_exists(dir.path()));
        assert!(!store_path(dir.path()).exists());
        remove(dir.path()).unwrap();
    }
}
