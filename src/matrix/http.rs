//! Plain JSON-over-HTTP for the endpoints matrix-sdk does not wrap: delayed-event management
//! (whose URL carries the secret delay id, so it must not go through the SDK's request
//! logging), transport discovery and the LiveKit token service.
//!
//! Owns one `reqwest` client (matrix-sdk's, same TLS stack) and turns every failure into
//! [`HttpFailure`]. Never logs URLs or bodies.

use std::time::Duration;

use matrix_sdk::reqwest::{self, Method, Url};
use serde_json::Value;

use super::error::{describe_reqwest, ServerRefusal};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub enum HttpFailure {
    /// No answer: DNS, connect, TLS, timeout.
    Unreachable(String),
    /// An answer with a non-2xx status.
    Refused(ServerRefusal),
    /// A 2xx answer whose body is not JSON.
    Garbage(String),
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(r) => write!(f, "unreachable: {r}"),
            Self::Refused(r) => write!(f, "{r}"),
            Self::Garbage(r) => write!(f, "bad answer: {r}"),
        }
    }
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("cannot read the CA file: {e}"))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client })
    }

    /// Sends a request and returns the JSON body of a 2xx answer (`{}` for an empty one).
    pub async fn json(
        &self,
        method: Method,
        url: Url,
        bearer: Option<&Secret>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, HttpFailure> {
        let mut req = self.client.request(method, url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| HttpFailure::Unreachable(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HttpFailure::Unreachable(describe_reqwest(&e)))?;
        if !(200..300).contains(&status) {
            return Err(HttpFailure::Refused(ServerRefusal::parse(status, &bytes)));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            let start: String = String::from_utf8_lossy(&bytes).chars().take(80).collect();
            HttpFailure::Garbage(format!("not JSON ({e}); it starts with {start:?}"))
        })
    }
}

/// `base` + path segments, each percent-encoded (room ids, state keys and delay ids contain
/// `!`, `@`, `:`). Query pairs are appended as given.
pub fn build_url(base: &str, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|e| format!("invalid URL {base:?}: {e}"))?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| format!("URL {base:?} cannot have a path"))?;
        path.pop_if_empty();
        for s in segments {
            // A segment may itself be a fixed multi-part path like "_matrix/client/v3".
            if s.starts_with('_') && s.contains('/') || s.starts_with('.') && s.contains('/') {
                for part in s.split('/') {
                    path.push(part);
                }
            } else {
                path.push(s);
            }
        }
    }
    if !query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_encoded_and_prefix_paths_kept() {
        let u = build_url(
            "http://127.0.0.1:8008/",
            &[
                "_matrix/client/v3/rooms",
                "!room:example.org",
                "state",
                "org.matrix.msc3401.call.member",
                "_@bot:example.org_DEV_m.call",
            ],
            &[("org.matrix.msc4140.delay", "10000")],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8008/_matrix/client/v3/rooms/!room:example.org/state/org.matrix.msc3401.call.member/_@bot:example.org_DEV_m.call?org.matrix.msc4140.delay=10000"
        );
        let u = build_url("https://rtc.example.org/livekit/jwt", &["sfu", "get"], &[]).unwrap();
        assert_eq!(u.as_str(), "https://rtc.example.org/livekit/jwt/sfu/get");
        let u = build_url("http://h/", &["x", "a/b#c?d"], &[]).unwrap();
        assert_eq!(u.as_str(), "http://h/x/a%2Fb%23c%3Fd");
    }
}
