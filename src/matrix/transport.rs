//! Finding the LiveKit token service ("RTC transport") for the homeserver.
//!
//! Order: `[livekit] service_url` in the config (an explicit override), then
//! `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`, then
//! `.well-known/matrix/client` → `org.matrix.msc4143.rtc_foci`. The first `livekit` entry wins.
//! Owns discovery only; it does not request tokens.

use matrix_sdk::reqwest::Method;
use serde_json::Value;
use tracing::{debug, info};

use super::error::MatrixError;
use super::http::{build_url, Http, HttpFailure};
use crate::secret::Secret;

/// First `{"type": "livekit", "livekit_service_url": …}` of the array under `key`.
pub fn pick_livekit(doc: &Value, key: &str) -> Option<String> {
    doc.get(key)?
        .as_array()?
        .iter()
        .find(|t| t.get("type").and_then(Value::as_str) == Some("livekit"))
        .and_then(|t| t.get("livekit_service_url"))
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| u.trim_end_matches('/').to_owned())
}

/// The server name part of a user id (`@u:example.org` → `example.org`).
pub fn server_name(user_id: &str) -> Option<&str> {
    user_id
        .split_once(':')
        .map(|(_, s)| s)
        .filter(|s| !s.is_empty())
}

pub async fn discover(
    http: &Http,
    homeserver: &str,
    user_id: &str,
    access_token: &Secret,
    configured: Option<&str>,
) -> Result<String, MatrixError> {
    if let Some(url) = configured {
        debug!("using the configured LiveKit service");
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let url = build_url(
        homeserver,
        &["_matrix/client/unstable/org.matrix.msc4143/rtc/transports"],
        &[],
    )
    .map_err(|reason| MatrixError::InvalidConfig {
        what: "matrix.homeserver",
        value: homeserver.to_owned(),
        reason,
    })?;
    match http
        .json(Method::GET, url, Some(access_token), None, None)
        .await
    {
        Ok(doc) => {
            if let Some(found) = pick_livekit(&doc, "rtc_transports") {
                info!(service = %found, "LiveKit service from the homeserver's RTC transports");
                return Ok(found);
            }
        }
        Err(HttpFailure::Unreachable(reason)) => {
            return Err(MatrixError::Unreachable {
                homeserver: homeserver.to_owned(),
                reason,
            })
        }
        Err(e) => debug!("no RTC transports endpoint: {e}"),
    }
    let mut bases = vec![homeserver.to_owned()];
    if let Some(name) = server_name(user_id) {
        let by_name = format!("https://{name}");
        if !bases.contains(&by_name) {
            bases.push(by_name);
        }
    }
    for base in bases {
        let Ok(url) = build_url(&base, &[".well-known/matrix/client"], &[]) else {
            continue;
        };
        match http.json(Method::GET, url, None, None, None).await {
            Ok(doc) => {
                if let Some(found) = pick_livekit(&doc, "org.matrix.msc4143.rtc_foci") {
                    info!(service = %found, "LiveKit service from .well-known");
                    return Ok(found);
                }
            }
            Err(e) => debug!("no usable .well-known at {base}: {e}"),
        }
    }
    Err(MatrixError::NoTransport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_livekit_transport_wins() {
        let doc = json!({"rtc_transports": [
            {"type": "other", "livekit_service_url": "https://no"},
            {"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt/"},
            {"type": "livekit", "livekit_service_url": "https://second"}]});
        assert_eq!(
            pick_livekit(&doc, "rtc_transports").as_deref(),
            Some("https://rtc.example.org/livekit/jwt")
        );
        let wk = json!({"m.homeserver": {"base_url": "https://x"},
            "org.matrix.msc4143.rtc_foci": [{"type": "livekit", "livekit_service_url": "http://127.0.0.1:8090"}]});
        assert_eq!(
            pick_livekit(&wk, "org.matrix.msc4143.rtc_foci").as_deref(),
            Some("http://127.0.0.1:8090")
        );
        assert_eq!(pick_livekit(&json!({}), "rtc_transports"), None);
        assert_eq!(
            pick_livekit(&json!({"rtc_transports": "x"}), "rtc_transports"),
            None
        );
        let bad =
            json!({"rtc_transports": [{"type": "livekit", "livekit_service_url": "ftp://x"}]});
        assert_eq!(pick_livekit(&bad, "rtc_transports"), None);
    }

    #[test]
    fn server_name_of_user() {
        assert_eq!(server_name("@door:example.org"), Some("example.org"));
        assert_eq!(server_name("@door:127.0.0.1:8008"), Some("127.0.0.1:8008"));
        assert_eq!(server_name("door"), None);
    }
}
