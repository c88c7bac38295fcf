//! Accounts and rooms of the dev stack: the device `@intercom`, residents `@alice` and `@bob`,
//! the door room `#door` (and `#door-encrypted`). Owns `DIR/credentials.json` (passwords and
//! device ids kept across runs that reuse a working directory); the HTTP calls themselves are in
//! [`crate::matrix`].

use std::path::{Path, PathBuf};

use matrix_intercom::secret::{write_private_atomic, Secret};
use serde::{Deserialize, Serialize};

use crate::info::{User, Users};
use crate::matrix::{Homeserver, MatrixError, Session};
use crate::random;

/// Passwords and device ids, in the working directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Alias localparts of the rooms.
pub const ROOM_ALIAS: &str = "door";
pub const ENCRYPTED_ROOM_ALIAS: &str = "door-encrypted";

#[derive(Serialize, Deserialize)]
struct Credentials {
    intercom: Credential,
    alice: Credential,
    bob: Credential,
}

#[derive(Serialize, Deserialize)]
struct Credential {
    password: Secret,
    #[serde(default)]
    device_id: Option<String>,
}

/// What provisioning made.
pub struct Provisioned {
    pub users: Users,
    pub room_id: String,
    pub room_alias: String,
    pub encrypted_room: Option<(String, String)>,
}

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    #[error("cannot read {path}: {detail}; delete the working directory to start afresh")]
    ReadCredentials { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    WriteCredentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read random bytes for passwords: {0}")]
    Random(std::io::Error),
    #[error("{user} exists in the homeserver database but its password in {path} is wrong ({source}); delete the working directory to start afresh")]
    StaleCredentials {
        user: String,
        path: PathBuf,
        source: MatrixError,
    },
}

/// Whether `dir` holds credentials from an earlier run.
pub fn has_credentials(dir: &Path) -> bool {
    dir.join(CREDENTIALS_FILE).exists()
}

fn load_or_create(path: &Path) -> Result<Credentials, ProvisionError> {
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| ProvisionError::ReadCredentials {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        return serde_json::from_slice(&bytes).map_err(|e| ProvisionError::ReadCredentials {
            path: path.to_owned(),
            detail: e.to_string(),
        });
    }
    let fresh = || -> Result<Credential, ProvisionError> {
        Ok(Credential {
            password: Secret::new(random::alphanumeric(24).map_err(ProvisionError::Random)?),
            device_id: None,
        })
    };
    let creds = Credentials {
        intercom: fresh()?,
        alice: fresh()?,
        bob: fresh()?,
    };
    save(path, &creds)?;
    Ok(creds)
}

fn save(path: &Path, creds: &Credentials) -> Result<(), ProvisionError> {
    let json = serde_json::to_vec_pretty(creds).expect("credentials always serialize");
    write_private_atomic(path, &json).map_err(|source| ProvisionError::WriteCredentials {
        path: path.to_owned(),
        source,
    })
}

/// Registers the user, or logs in if it exists from an earlier run (same device if known).
async fn session(
    hs: &Homeserver,
    shared_secret: &Secret,
    server_name: &str,
    localpart: &str,
    cred: &Credential,
    creds_path: &Path,
) -> Result<Session, ProvisionError> {
    match hs
        .register(shared_secret, localpart, &cred.password, false)
        .await
    {
        Ok(session) => Ok(session),
        Err(e) if e.errcode() == Some("M_USER_IN_USE") => {
            let user_id = format!("@{localpart}:{server_name}");
            hs.login(&user_id, &cred.password, cred.device_id.as_deref())
                .await
                .map_err(|source| ProvisionError::StaleCredentials {
                    user: user_id,
                    path: creds_path.to_owned(),
                    source,
                })
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the users and rooms exist and everyone is joined; returns sessions for the
/// residents (the device's temporary session is logged out again).
pub async fn provision(
    hs: &Homeserver,
    dir: &Path,
    server_name: &str,
    shared_secret: &Secret,
    encrypted_room: bool,
) -> Result<Provisioned, ProvisionError> {
    let path = dir.join(CREDENTIALS_FILE);
    let mut creds = load_or_create(&path)?;
    let intercom = session(
        hs,
        shared_secret,
        server_name,
        "intercom",
        &creds.intercom,
        &path,
    )
    .await?;
    let alice = session(hs, shared_secret, server_name, "alice", &creds.alice, &path).await?;
    let bob = session(hs, shared_secret, server_name, "bob", &creds.bob, &path).await?;
    creds.alice.device_id = Some(alice.device_id.clone());
    creds.bob.device_id = Some(bob.device_id.clone());
    save(&path, &creds)?;

    let room = |alias_localpart: &'static str, name: &'static str, encrypted: bool| {
        let (hs, alice, bob, intercom) = (hs, &alice, &bob, &intercom);
        async move {
            let alias = format!("#{alias_localpart}:{server_name}");
            let room_id = match hs.resolve_alias(&alias).await? {
                Some(id) => id,
                None => {
                    let invite = [intercom.user_id.as_str(), bob.user_id.as_str()];
                    hs.create_room(
                        &alice.access_token,
                        alias_localpart,
                        name,
                        &invite,
                        encrypted,
                    )
                    .await?
                }
            };
            hs.join(&bob.access_token, &room_id).await?;
            hs.join(&intercom.access_token, &room_id).await?;
            Ok::<_, MatrixError>((room_id, alias))
        }
    };
    let (room_id, room_alias) = room(ROOM_ALIAS, "Door", false).await?;
    let encrypted = if encrypted_room {
        Some(room(ENCRYPTED_ROOM_ALIAS, "Door (encrypted)", true).await?)
    } else {
        None
    };
    hs.logout(&intercom.access_token).await?;

    let resident = |s: Session, c: &Credential| User {
        user_id: s.user_id,
        password: c.password.clone(),
        access_token: Some(s.access_token),
        device_id: Some(s.device_id),
    };
    Ok(Provisioned {
        users: Users {
            intercom: User {
                user_id: intercom.user_id,
                password: creds.intercom.password.clone(),
                access_token: None,
                device_id: None,
            },
            alice: resident(alice, &creds.alice),
            bob: resident(bob, &creds.bob),
        },
        room_id,
        room_alias,
        encrypted_room: encrypted,
    })
}
