//! Room creation on the LiveKit(-compatible) SFU, for full-access users.
//!
//! Owns: `POST {sfu-admin-url}/twirp/livekit.RoomService/CreateRoom` (Twirp JSON) with the
//! real service's room settings (empty timeout 300 s, departure timeout 20 s) and a Bearer
//! token granting `video.roomCreate`. Must not touch: participant tokens.

use std::time::Duration;

use reqwest::Url;
use serde::Serialize;

use crate::jwt::LiveKitKeys;

const CREATE_ROOM_PATH: &str = "/twirp/livekit.RoomService/CreateRoom";
/// Keep the room this long when nobody joins (lk-jwt-service `emptyTimeoutSecs`).
pub const EMPTY_TIMEOUT_SECS: u32 = 300;
/// Keep the room this long after the last participant left (`departureTimeoutSecs`).
pub const DEPARTURE_TIMEOUT_SECS: u32 = 20;
/// `base` with `suffix` appended to its path (a base path prefix is kept).
pub(crate) fn with_path_suffix(base: &Url, suffix: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}{suffix}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the room could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SfuAdminError {
    #[error("could not sign the room-create token")]
    Sign(#[from] livekit_api::access_token::AccessTokenError),
    #[error("CreateRoom request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered CreateRoom with HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

#[derive(Serialize)]
struct CreateRoomRequest<'a> {
    name: &'a str,
    empty_timeout: u32,
    departure_timeout: u32,
}

/// A client of the SFU's RoomService API.
#[derive(Debug, Clone)]
pub struct SfuAdmin {
    client: reqwest::Client,
    endpoint: Url,
    keys: LiveKitKeys,
}

impl SfuAdmin {
    /// `base` is the SFU's HTTP base URL (the `ws(s)://` LiveKit URL as `http(s)://`).
    pub fn new(client: reqwest::Client, base: &Url, keys: LiveKitKeys) -> Self {
        Self {
            client,
            endpoint: with_path_suffix(base, CREATE_ROOM_PATH),
            keys,
        }
    }

    /// Creates room `name`, or succeeds if it exists (LiveKit's CreateRoom is idempotent).
    pub async fn create_room(&self, name: &str) -> Result<(), SfuAdminError> {
        let token = self.keys.room_create_token()?;
        let url = self.endpoint.to_string();
        let response = self
            .client
            .post(self.endpoint.clone())
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                serde_json::to_vec(&CreateRoomRequest {
                    name,
                    empty_timeout: EMPTY_TIMEOUT_SECS,
                    departure_timeout: DEPARTURE_TIMEOUT_SECS,
                })
                .expect("serialising a string and two numbers cannot fail"),
            )
            .send()
            .await
            .map_err(|source| SfuAdminError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(SfuAdminError::Status {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        })
    }
}
