//! The endpoints: routing, the token flow of lk-jwt-service `handler.go`, and the answers.
//!
//! Owns: what each (method, path, body) gets back — status, headers, body — with no sockets,
//! so tests call [`Service::handle`] directly. Must not touch: listening (see `server`).
//!
//! Flow of both token endpoints: strict decode (400 `M_NOT_JSON`) → validate (400
//! `M_BAD_JSON`) → OpenID check (401 `M_UNAUTHORIZED`) → full-access check → sign (500) →
//! for full-access users, create the room on the SFU if `--sfu-admin-url` is set (500) →
//! `200 {"url", "jwt"}`.

use std::time::Duration;

use hyper::Method;
use tracing::{info, warn};

use crate::config::{ConfigError, FullAccess, ServiceConfig};
use crate::error::MatrixError;
use crate::jwt::LiveKitKeys;
use crate::naming::{legacy_identity, member_identity, room_alias, LEGACY_SLOT_ID};
use crate::openid::OpenIdVerifier;
use crate::request::{decode, LegacySfuRequest, OpenIdToken, SfuRequest, SfuResponse};
use crate::sfu_admin::SfuAdmin;

/// Connect timeout of outgoing requests (gomatrixserverlib's dialer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall timeout of outgoing requests (gomatrixserverlib's `requestTimeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers of the token endpoints (lk-jwt-service `corsJSON`).
const CORS_JSON: [(&str, &str); 4] = [
    ("content-type", "application/json"),
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "POST"),
    (
        "access-control-allow-headers",
        "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token",
    ),
];

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn empty(status: u16, headers: &[(&'static str, &'static str)]) -> Self {
        Self {
            status,
            headers: headers.to_vec(),
            body: Vec::new(),
        }
    }

    /// The value of header `name` (lower case), if set.
    pub fn header(&self, name: &str) -> Option<&'static str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// What Go's `ServeMux` answers for an unknown path.
    fn not_found() -> Self {
        Self {
            status: 404,
            headers: vec![
                ("content-type", "text/plain; charset=utf-8"),
                ("x-content-type-options", "nosniff"),
            ],
            body: b"404 page not found\n".to_vec(),
        }
    }
}

/// The token service.
#[derive(Debug, Clone)]
pub struct Service {
    livekit_url: String,
    keys: LiveKitKeys,
    full_access: FullAccess,
    openid: OpenIdVerifier,
    sfu_admin: Option<SfuAdmin>,
}

impl Service {
    pub fn new(config: ServiceConfig) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(ConfigError::HttpClient)?;
        let sfu_admin = config
            .sfu_admin_url
            .as_ref()
            .map(|url| SfuAdmin::new(client.clone(), url, config.keys.clone()));
        Ok(Self {
            livekit_url: config.livekit_url,
            keys: config.keys,
            full_access: config.full_access,
            openid: OpenIdVerifier::new(client, config.homeservers),
            sfu_admin,
        })
    }

    /// Answers one request.
    pub async fn handle(&self, method: &Method, path: &str, body: &[u8]) -> Reply {
        let legacy = match path {
            "/sfu/get" => true,
            "/get_token" => false,
            "/healthz" => {
                let status = if method == Method::GET || method == Method::HEAD {
                    200
                } else {
                    405
                };
                return Reply::empty(status, &[]);
            }
            _ => return Reply::not_found(),
        };
        if method == Method::OPTIONS {
            return Reply::empty(200, &CORS_JSON);
        }
        if method != Method::POST {
            return Reply::empty(405, &CORS_JSON);
        }
        let result = if legacy {
            self.sfu_get(body).await
        } else {
            self.get_token(body).await
        };
        match result {
            Ok(response) => {
                let mut body = serde_json::to_vec(&response)
                    .expect("serialising two strings into memory cannot fail");
                body.push(b'\n');
                Reply {
                    status: 200,
                    headers: CORS_JSON.to_vec(),
                    body,
                }
            }
            Err(e) => Reply {
                status: e.status,
                headers: CORS_JSON.to_vec(),
                body: e.body(),
            },
        }
    }

    /// `POST /sfu/get`: identity `<user>:<device_id>`, room of slot `m.call#ROOM`.
    pub async fn sfu_get(&self, body: &[u8]) -> Result<SfuResponse, MatrixError> {
        let req: LegacySfuRequest = decode(body)?;
        req.validate()?;
        let user = self.verify(&req.openid_token, None).await?;
        let identity = legacy_identity(&user, &req.device_id);
        let alias = room_alias(&req.room, LEGACY_SLOT_ID);
        let delegation = !req.delay_id.is_empty();
        self.issue(
            &req.openid_token,
            &user,
            &req.room,
            identity,
            alias,
            delegation,
        )
        .await
    }

    /// `POST /get_token`: identity hashed from (user, claimed device, member id).
    pub async fn get_token(&self, body: &[u8]) -> Result<SfuResponse, MatrixError> {
        let req: SfuRequest = decode(body)?;
        req.validate()?;
        let user = self
            .verify(&req.openid_token, Some(&req.member.claimed_user_id))
            .await?;
        let identity = member_identity(&user, &req.member.claimed_device_id, &req.member.id);
        let alias = room_alias(&req.room_id, &req.slot_id);
        let delegation = !req.delay_id.is_empty();
        self.issue(
            &req.openid_token,
            &user,
            &req.room_id,
            identity,
            alias,
            delegation,
        )
        .await
    }

    /// The verified user id; `claimed` must match it when given.
    async fn verify(
        &self,
        token: &OpenIdToken,
        claimed: Option<&str>,
    ) -> Result<String, MatrixError> {
        let server = &token.matrix_server_name;
        let user = match self.openid.user_id(server, &token.access_token).await {
            Ok(user) => user,
            Err(e) => {
                warn!(matrix_server_name = %server, "OpenID check failed: {}", with_causes(&e));
                return Err(MatrixError::unauthorized());
            }
        };
        if let Some(claimed) = claimed.filter(|c| *c != user) {
            warn!(claimed_user_id = %claimed, verified = %user, "claimed user is not the token's user");
            return Err(MatrixError::unauthorized());
        }
        Ok(user)
    }

    async fn issue(
        &self,
        token: &OpenIdToken,
        user: &str,
        matrix_room: &str,
        identity: String,
        alias: String,
        delegation: bool,
    ) -> Result<SfuResponse, MatrixError> {
        let full_access = self.full_access.allows(&token.matrix_server_name);
        if delegation && !full_access {
            return Err(MatrixError::bad_json(
                "Delegation of delayed events is only supported for full access users",
            ));
        }
        let jwt = self.keys.join_token(&alias, &identity).map_err(|e| {
            warn!(user, "could not sign the LiveKit token: {e}");
            MatrixError::unknown("Internal Server Error")
        })?;
        if full_access {
            if delegation {
                // Delegation is not implemented here; this is the real service's answer when
                // it cannot find the homeserver's client-server API.
                warn!(user, "delayed-leave delegation requested but not supported");
                return Err(MatrixError::bad_json("Unable to resolve client-server API"));
            }
            if let Some(admin) = &self.sfu_admin {
                admin.create_room(&alias).await.map_err(|e| {
                    warn!(user, room = %alias, "could not create the LiveKit room: {}", with_causes(&e));
                    MatrixError::unknown("Unable to create room on SFU")
                })?;
            }
        }
        info!(
            user,
            matrix_room,
            identity = %identity,
            room = %alias,
            access = if full_access { "full" } else { "restricted" },
            "issued LiveKit token"
        );
        Ok(SfuResponse {
            url: self.livekit_url.clone(),
            jwt,
        })
    }
}

/// `error: cause: cause…`, for logs (reqwest's own message omits e.g. "connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
