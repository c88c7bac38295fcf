//! Typed errors of the Matrix side, and the one parser of Matrix-style error bodies
//! (`{"errcode": "…", "error": "…"}`) shared by the homeserver and the token service.
//!
//! Owns error classification only; it performs no I/O.

use std::path::PathBuf;
use std::time::Duration;

/// What a server said when it refused a request: status, errcode and its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRefusal {
    pub status: u16,
    /// `M_…` code, if the body carried one.
    pub errcode: Option<String>,
    /// The server's `error` text, or the start of a non-JSON body.
    pub message: String,
    /// `retry_after_ms` of a 429, if given.
    pub retry_after: Option<Duration>,
    /// `max_delay` of a delayed-event refusal, if given (ms).
    pub max_delay_ms: Option<u64>,
}

impl ServerRefusal {
    /// Parses an error response body. Never fails: a body that is not a Matrix error is
    /// kept (truncated) as the message.
    pub fn parse(status: u16, body: &[u8]) -> Self {
        let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| value.as_ref().and_then(|v| v.get(k));
        let errcode = field("errcode").and_then(|v| v.as_str()).map(str::to_owned);
        let message = match field("error").and_then(|v| v.as_str()) {
            Some(m) => m.to_owned(),
            None => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    "(empty body)".to_owned()
                } else {
                    text.chars().take(200).collect()
                }
            }
        };
        let retry_after = field("retry_after_ms")
            .and_then(|v| v.as_u64())
            .map(Duration::from_millis);
        let max_delay_ms = field("max_delay")
            .or_else(|| field("org.matrix.msc4140.max_delay"))
            .and_then(|v| v.as_u64());
        Self {
            status,
            errcode,
            message,
            retry_after,
            max_delay_ms,
        }
    }

    pub fn is(&self, errcode: &str) -> bool {
        self.errcode.as_deref() == Some(errcode)
    }

    /// The delay asked for is above the server's limit. Synapse answers `403 M_FORBIDDEN`
    /// "… exceeds the allowed maximum …", the MSC (and js-sdk) `M_MAX_DELAY_EXCEEDED`.
    pub fn is_max_delay_exceeded(&self) -> bool {
        self.is("M_MAX_DELAY_EXCEEDED")
            || (self.is("M_FORBIDDEN") && self.message.contains("exceeds the allowed maximum"))
    }

    /// Worth retrying later: rate limit or server-side failure.
    pub fn is_transient(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

impl std::fmt::Display for ServerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.errcode {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read or write the session file {path}: {source}; check that the state directory exists and is writable by the service user")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the session file {path} is corrupted ({reason}); it was moved aside to {moved_to} — run `matrix-intercom login` to create a new session")]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    #[error("the session file {path} belongs to {found}, but the config says {expected}; run `matrix-intercom logout` or fix `matrix.user_id`")]
    WrongUser {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Everything that can go wrong on the Matrix side, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("no session yet and no `matrix.password` in the config: run `matrix-intercom login` or add the password for the first start")]
    NotLoggedIn,
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidConfig {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot reach the homeserver {homeserver}: {reason}; check the network and `matrix.homeserver`")]
    Unreachable { homeserver: String, reason: String },
    #[error("the homeserver refused {action}: {refusal}")]
    Homeserver {
        action: &'static str,
        refusal: ServerRefusal,
    },
    #[error("login failed: {0}")]
    Login(String),
    #[error(
        "the access token was revoked or has expired ({0}); run `matrix-intercom login` again"
    )]
    TokenRevoked(String),
    #[error("the device is not a member of room {room}; invite and let it join first")]
    NotInRoom { room: String },
    #[error("no LiveKit token service found: the homeserver lists no `livekit` RTC transport, its .well-known has no `org.matrix.msc4143.rtc_foci`, and `[livekit] service_url` is not set")]
    NoTransport,
    #[error("the token service at {url} refused the request: {refusal}")]
    TokenService { url: String, refusal: ServerRefusal },
    #[error("the token service at {url} answered something that is not a token grant: {reason}")]
    TokenServiceGarbage { url: String, reason: String },
    #[error("cannot reach the token service at {url}: {reason}")]
    TokenServiceUnreachable { url: String, reason: String },
    #[error("the device may not send call memberships in room {room} ({refusal}); give it the power level for `org.matrix.msc3401.call.member` (Element shows calls only when that level is 0)")]
    NoCallPermission {
        room: String,
        refusal: ServerRefusal,
    },
    #[error("not in a call: join first")]
    NotJoined,
    #[error("Matrix client error: {0}")]
    Sdk(String),
}

impl MatrixError {
    /// Worth retrying with backoff (network or server trouble, not a configuration error).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::TokenServiceUnreachable { .. } => true,
            Self::Homeserver { refusal, .. } | Self::TokenService { refusal, .. } => {
                refusal.is_transient()
            }
            _ => false,
        }
    }

    /// Classifies a matrix-sdk error. The SDK already retried 429 (honouring
    /// `retry_after_ms`) and 5xx within its request config before this is reached.
    pub(crate) fn from_sdk(
        action: &'static str,
        homeserver: &str,
        err: &matrix_sdk::Error,
    ) -> Self {
        if let Some(http) = as_http(err) {
            return Self::from_http(action, homeserver, http);
        }
        Self::Sdk(format!("{action}: {err}"))
    }

    pub(crate) fn from_http(
        action: &'static str,
        homeserver: &str,
        err: &matrix_sdk::HttpError,
    ) -> Self {
        use matrix_sdk::ruma::api::error::{ErrorBody, ErrorKind, RetryAfter};
        match err {
            matrix_sdk::HttpError::Cached(inner) => {
                return Self::from_http(action, homeserver, inner)
            }
            matrix_sdk::HttpError::RefreshToken(e) => return Self::TokenRevoked(e.to_string()),
            _ => {}
        }
        if let Some(api) = err.as_client_api_error() {
            let status = api.status_code.as_u16();
            let refusal = match &api.body {
                ErrorBody::Standard(std) => {
                    let errcode = std.kind.errcode().to_string();
                    let retry_after = match &std.kind {
                        ErrorKind::LimitExceeded(data) => match data.retry_after {
                            Some(RetryAfter::Delay(d)) => Some(d),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let ErrorKind::UnknownToken(_) = &std.kind {
                        return Self::TokenRevoked(std.message.clone());
                    }
                    ServerRefusal {
                        status,
                        errcode: Some(errcode),
                        message: std.message.clone(),
                        retry_after,
                        max_delay_ms: None,
                    }
                }
                ErrorBody::Json(value) => {
                    ServerRefusal::parse(status, value.to_string().as_bytes())
                }
                other => ServerRefusal {
                    status,
                    errcode: None,
                    message: format!("{other:?}").chars().take(200).collect(),
                    retry_after: None,
                    max_delay_ms: None,
                },
            };
            return Self::Homeserver { action, refusal };
        }
        match err {
            matrix_sdk::HttpError::Reqwest(e) => Self::Unreachable {
                homeserver: homeserver.to_owned(),
                reason: describe_reqwest(e),
            },
            other => Self::Sdk(format!("{action}: {other}")),
        }
    }
}

fn as_http(err: &matrix_sdk::Error) -> Option<&matrix_sdk::HttpError> {
    match err {
        matrix_sdk::Error::Http(h) => Some(h),
        _ => None,
    }
}

/// A reqwest error without its URL (URLs may carry delay ids).
pub(crate) fn describe_reqwest(e: &matrix_sdk::reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() || e.is_body() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_matrix_error_body_with_retry_after() {
        let r = ServerRefusal::parse(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":1500}"#,
        );
        assert_eq!(r.errcode.as_deref(), Some("M_LIMIT_EXCEEDED"));
        assert_eq!(r.retry_after, Some(Duration::from_millis(1500)));
        assert!(r.is_transient());
        assert_eq!(
            r.to_string(),
            "HTTP 429 M_LIMIT_EXCEEDED: Too Many Requests"
        );
    }

    #[test]
    fn non_json_body_is_kept_as_message() {
        let r = ServerRefusal::parse(502, b"<html>Bad Gateway</html>");
        assert_eq!(r.errcode, None);
        assert_eq!(r.message, "<html>Bad Gateway</html>");
        assert!(r.is_transient());
        assert_eq!(ServerRefusal::parse(500, b"").message, "(empty body)");
    }

    #[test]
    fn both_max_delay_refusals_are_recognised() {
        let synapse = ServerRefusal::parse(
            403,
            br#"{"errcode":"M_FORBIDDEN","error":"The requested delay exceeds the allowed maximum."}"#,
        );
        assert!(synapse.is_max_delay_exceeded());
        let msc = ServerRefusal::parse(
            400,
            br#"{"errcode":"M_MAX_DELAY_EXCEEDED","error":"too long","max_delay":5000}"#,
        );
        assert!(msc.is_max_delay_exceeded());
        assert_eq!(msc.max_delay_ms, Some(5000));
        let other = ServerRefusal::parse(403, br#"{"errcode":"M_FORBIDDEN","error":"nope"}"#);
        assert!(!other.is_max_delay_exceeded());
    }
}
