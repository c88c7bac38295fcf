//! The Matrix HTTP calls the dev stack makes to its own Synapse: shared-secret registration,
//! login/logout, room creation, joins and alias lookups. Owns nothing but these requests; it
//! never logs a request body or a response carrying a secret.

use hmac::{Hmac, Mac};
use matrix_intercom::secret::Secret;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;

/// State event type of a MatrixRTC call membership.
pub const CALL_MEMBER_EVENT: &str = "org.matrix.msc3401.call.member";
/// Room event type of a ring.
pub const RTC_NOTIFICATION_EVENT: &str = "org.matrix.msc4075.rtc.notification";

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access_token: Secret,
    pub device_id: String,
}

/// A Matrix request failed.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("{what}: cannot reach the homeserver: {source}")]
    Http {
        what: &'static str,
        source: reqwest::Error,
    },
    #[error("{what}: homeserver answered {status} {errcode}: {error}")]
    Status {
        what: &'static str,
        status: StatusCode,
        errcode: String,
        error: String,
    },
    #[error("{what}: unexpected answer from the homeserver: {detail}")]
    BadResponse { what: &'static str, detail: String },
    #[error("bad homeserver URL {url}: {detail}")]
    BadUrl { url: String, detail: String },
}

impl MatrixError {
    /// The Matrix `errcode` of an error answer, if this is one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            MatrixError::Status { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// A client for one homeserver.
#[derive(Clone)]
pub struct Homeserver {
    http: reqwest::Client,
    base: Url,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct SessionBody {
    user_id: String,
    access_token: String,
    device_id: String,
}

impl Homeserver {
    /// `base_url` like `http://127.0.0.1:8008`.
    pub fn new(http: reqwest::Client, base_url: &str) -> Result<Self, MatrixError> {
        let base = Url::parse(base_url).map_err(|e| MatrixError::BadUrl {
            url: base_url.to_owned(),
            detail: e.to_string(),
        })?;
        if base.cannot_be_a_base() {
            return Err(MatrixError::BadUrl {
                url: base_url.to_owned(),
                detail: "not an http(s) base URL".into(),
            });
        }
        Ok(Self { http, base })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new()")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Sends a request and parses the JSON answer; non-2xx answers become [`MatrixError::Status`].
    pub async fn request(
        &self,
        what: &'static str,
        method: Method,
        url: Url,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Value, MatrixError> {
        let mut req = self.http.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| MatrixError::Http { what, source })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| MatrixError::Http { what, source })?;
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
                errcode: String::new(),
                error: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
            return Err(MatrixError::Status {
                what,
                status,
                errcode: err.errcode,
                error: err.error,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| MatrixError::BadResponse {
            what,
            detail: format!("not JSON: {e}"),
        })
    }

    /// Registers `localpart` with Synapse's shared registration secret
    /// (`/_synapse/admin/v1/register`, HMAC-SHA1 over nonce, user, password, admin flag).
    /// An existing user gives errcode `M_USER_IN_USE`.
    pub async fn register(
        &self,
        shared_secret: &Secret,
        localpart: &str,
        password: &Secret,
        admin: bool,
    ) -> Result<Session, MatrixError> {
        const WHAT: &str = "shared-secret registration";
        let url = self.url(&["_synapse", "admin", "v1", "register"]);
        let nonce = self
            .request(WHAT, Method::GET, url.clone(), None, None)
            .await?;
        let nonce = nonce["nonce"]
            .as_str()
            .ok_or(MatrixError::BadResponse {
                what: WHAT,
                detail: "no nonce".into(),
            })?
            .to_owned();
        let mac = registration_mac(shared_secret, &nonce, localpart, password, admin);
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password.expose(),
            "admin": admin,
            "mac": mac,
        });
        let answer = self
            .request(WHAT, Method::POST, url, None, Some(&body))
            .await?;
        session(WHAT, answer)
    }

    /// Password login; `device_id` reuses that device (a new access token for it).
    pub async fn login(
        &self,
        user_id: &str,
        password: &Secret,
        device_id: Option<&str>,
    ) -> Result<Session, MatrixError> {
        const WHAT: &str = "login";
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password.expose(),
            "initial_device_display_name": "mi-devstack",
        });
        if let Some(device_id) = device_id {
            body["device_id"] = json!(device_id);
        }
        let url = self.url(&["_matrix", "client", "v3", "login"]);
        let answer = self
            .request(WHAT, Method::POST, url, None, Some(&body))
            .await?;
        session(WHAT, answer)
    }

    /// Ends the session (deletes its device).
    pub async fn logout(&self, token: &Secret) -> Result<(), MatrixError> {
        let url = self.url(&["_matrix", "client", "v3", "logout"]);
        self.request("logout", Method::POST, url, Some(token), Some(&json!({})))
            .await
            .map(drop)
    }

    /// The room id an alias points to, `None` if the alias does not exist.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<String>, MatrixError> {
        const WHAT: &str = "alias lookup";
        let url = self.url(&["_matrix", "client", "v3", "directory", "room", alias]);
        match self.request(WHAT, Method::GET, url, None, None).await {
            Ok(answer) => Ok(Some(room_id(WHAT, &answer)?)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a private room with an alias, inviting `invite`; call membership and ringing are
    /// allowed for every member (power level 0), the rest keeps Synapse's defaults.
    pub async fn create_room(
        &self,
        creator: &Secret,
        alias_localpart: &str,
        name: &str,
        invite: &[&str],
        encrypted: bool,
    ) -> Result<String, MatrixError> {
        const WHAT: &str = "room creation";
        let mut initial_state = Vec::new();
        if encrypted {
            initial_state.push(json!({
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }));
        }
        let body = json!({
            "preset": "private_chat",
            "name": name,
            "room_alias_name": alias_localpart,
            "invite": invite,
            "initial_state": initial_state,
            // `events` replaces Synapse's default map, so the defaults are repeated here.
            "power_level_content_override": {"events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
                CALL_MEMBER_EVENT: 0,
                RTC_NOTIFICATION_EVENT: 0,
            }},
        });
        let url = self.url(&["_matrix", "client", "v3", "createRoom"]);
        let answer = self
            .request(WHAT, Method::POST, url, Some(creator), Some(&body))
            .await?;
        room_id(WHAT, &answer)
    }

    /// Joins a room by id or alias (no-op when already joined).
    pub async fn join(&self, token: &Secret, room: &str) -> Result<(), MatrixError> {
        let url = self.url(&["_matrix", "client", "v3", "join", room]);
        self.request("join", Method::POST, url, Some(token), Some(&json!({})))
            .await
            .map(drop)
    }
}

fn session(what: &'static str, answer: Value) -> Result<Session, MatrixError> {
    let body: SessionBody =
        serde_json::from_value(answer).map_err(|e| MatrixError::BadResponse {
            what,
            detail: format!("no session in answer: {e}"),
        })?;
    Ok(Session {
        user_id: body.user_id,
        access_token: Secret::new(body.access_token),
        device_id: body.device_id,
    })
}

fn room_id(what: &'static str, answer: &Value) -> Result<String, MatrixError> {
    answer["room_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or(MatrixError::BadResponse {
            what,
            detail: "no room_id".into(),
        })
}

/// Hex HMAC-SHA1 of `nonce \0 user \0 password \0 admin|notadmin` (Synapse admin register API).
pub fn registration_mac(
    shared_secret: &Secret,
    nonce: &str,
    localpart: &str,
    password: &Secret,
    admin: bool,
) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(shared_secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(localpart.as_bytes());
    mac.update(b"\0");
    mac.update(password.expose().as_bytes());
    mac.update(b"\0");
    mac.update(if admin { b"admin" } else { b"notadmin" });
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_mac_matches_synapse_docs_algorithm() {
        // Reference computed with Python:
        // hmac.new(b"secret", b"abc\0alice\0pw\0notadmin", hashlib.sha1).hexdigest()
        let mac = registration_mac(
            &Secret::new("secret"),
            "abc",
            "alice",
            &Secret::new("pw"),
            false,
        );
        assert_eq!(mac, "42e32623fe124933c326f9d2d67ff7c617915a10");
    }

    #[test]
    fn paths_escape_room_ids_and_aliases() {
        let hs = Homeserver::new(reqwest::Client::new(), "http://127.0.0.1:8008").unwrap();
        let url = hs.url(&[
            "_matrix",
            "client",
            "v3",
            "directory",
            "room",
            "#door:localhost",
        ]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8008/_matrix/client/v3/directory/room/%23door:localhost"
        );
    }
}
