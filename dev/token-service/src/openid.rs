//! The OpenID check: who does this OpenID token belong to, according to its homeserver?
//!
//! Owns: `GET {homeserver}/_matrix/federation/v1/openid/userinfo?access_token=…` and the
//! checks gomatrixserverlib's `LookupUserInfo` makes on the answer (2xx, `{"sub": …}`, and the
//! user's server part equal to the `matrix_server_name` asked). Must not touch: token issuing.
//!
//! Deviation from lk-jwt-service: the homeserver is the `--homeserver NAME=URL` mapping, else
//! `https://NAME` (no `.well-known`, SRV or port 8448 discovery).

use std::collections::HashMap;

use reqwest::Url;
use serde::Deserialize;

use crate::redacted::Redacted;
use crate::request::{nullable, object_or_null};
use crate::sfu_admin::with_path_suffix;

const USERINFO_PATH: &str = "/_matrix/federation/v1/openid/userinfo";

/// Why an OpenID token could not be verified. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum OpenIdError {
    #[error("matrix_server_name {0:?} is not a server name (host[:port]) and has no --homeserver mapping")]
    BadServerName(String),
    #[error("userinfo request to {base} failed")]
    Request {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{base} answered userinfo with HTTP {status}: the token is unknown or expired")]
    Status { base: String, status: u16 },
    #[error("{base} answered userinfo with a body that is not {{\"sub\": \"@user:server\"}}")]
    Body { base: String },
    #[error("{base} vouched for {sub:?}, which is not a user of {server:?}")]
    WrongServer {
        base: String,
        sub: String,
        server: String,
    },
}

#[derive(Default, Deserialize)]
struct UserInfo {
    #[serde(default, deserialize_with = "nullable")]
    sub: String,
}

/// Looks up OpenID tokens at their homeservers.
#[derive(Debug, Clone)]
pub struct OpenIdVerifier {
    client: reqwest::Client,
    homeservers: HashMap<String, Url>,
}

impl OpenIdVerifier {
    /// `homeservers` maps a `matrix_server_name` to the base URL of its federation/openid
    /// listener; unmapped names are looked up at `https://NAME`.
    pub fn new(client: reqwest::Client, homeservers: HashMap<String, Url>) -> Self {
        Self {
            client,
            homeservers,
        }
    }

    /// Base URL the userinfo request for `server_name` goes to.
    pub fn base_url(&self, server_name: &str) -> Result<Url, OpenIdError> {
        if let Some(url) = self.homeservers.get(server_name) {
            return Ok(url.clone());
        }
        if !is_server_name(server_name) {
            return Err(OpenIdError::BadServerName(server_name.to_owned()));
        }
        Url::parse(&format!("https://{server_name}"))
            .map_err(|_| OpenIdError::BadServerName(server_name.to_owned()))
    }

    /// The Matrix user id the token belongs to.
    pub async fn user_id(
        &self,
        server_name: &str,
        access_token: &Redacted,
    ) -> Result<String, OpenIdError> {
        let base = self.base_url(server_name)?;
        let shown = base.as_str().trim_end_matches('/').to_owned();
        let mut url = with_path_suffix(&base, USERINFO_PATH);
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose());

        let request_failed = |e: reqwest::Error| OpenIdError::Request {
            base: shown.clone(),
            // The URL holds the access token: keep it out of the error.
            source: e.without_url(),
        };
        let response = self.client.get(url).send().await.map_err(request_failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(OpenIdError::Status {
                base: shown,
                status: status.as_u16(),
            });
        }
        let body = response.bytes().await.map_err(request_failed)?;
        // Like Go's json.Decoder: the first JSON value, unknown keys ignored.
        let mut de = serde_json::Deserializer::from_slice(&body);
        let info: UserInfo = object_or_null(&mut de).map_err(|_| OpenIdError::Body {
            base: shown.clone(),
        })?;
        match info.sub.split_once(':') {
            Some((_, server)) if server == server_name => Ok(info.sub),
            _ => Err(OpenIdError::WrongServer {
                base: shown,
                sub: info.sub,
                server: server_name.to_owned(),
            }),
        }
    }
}

/// Matrix server name grammar: a DNS name, IPv4 address or `[IPv6]`, optionally `:port`.
pub fn is_server_name(name: &str) -> bool {
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", port),
            _ => return false,
        }
    } else {
        name.split_at(name.find(':').unwrap_or(name.len()))
    };
    let port_ok = match port.strip_prefix(':') {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in [
            "example.com",
            "example.com:8448",
            "127.0.0.1",
            "[::1]:8008",
            "localhost",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "user@host",
            "host:",
            "host:port",
            "[::1",
            "[zz]:1",
            "e.com?x=1",
            "e.com#f",
            "host:123456",
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn unmapped_names_use_https_and_mapped_names_their_url() {
        let mapped = Url::parse("http://127.0.0.1:8008").unwrap();
        let v = OpenIdVerifier::new(
            reqwest::Client::new(),
            HashMap::from([("example.com".to_owned(), mapped.clone())]),
        );
        assert_eq!(v.base_url("example.com").unwrap(), mapped);
        assert_eq!(
            v.base_url("other.org:8448").unwrap().as_str(),
            "https://other.org:8448/"
        );
        assert!(matches!(
            v.base_url("evil.org/x?"),
            Err(OpenIdError::BadServerName(_))
        ));
    }
}
