//! Command line and the validated service configuration.
//!
//! Owns: parsing `mi-token-service` flags and refusing unsafe ones (a non-loopback listen
//! address unless private and allowed, plain `http` to anything but a loopback IP or without `--allow-insecure-loopback`).
//! Must not touch: I/O beyond reading the two `LIVEKIT_*` environment variables via clap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use reqwest::Url;

use crate::jwt::LiveKitKeys;
use crate::openid::is_server_name;
use crate::redacted::Redacted;

/// Dev-only stand-in for element-hq/lk-jwt-service: trades a Matrix OpenID token for a
/// LiveKit JWT on `POST /sfu/get` and `POST /get_token`.
#[derive(Parser)]
#[command(name = "mi-token-service", version)]
pub struct Cli {
    /// Address to listen on; loopback only (127.0.0.0/8 or ::1). Port 0 picks a free port.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// LiveKit URL returned to clients verbatim as `url` (e.g. ws://127.0.0.1:7880).
    #[arg(long, value_name = "URL")]
    pub livekit_url: String,
    /// LiveKit API key the JWTs are issued under.
    #[arg(long, env = "LIVEKIT_KEY", value_name = "KEY", hide_env_values = true)]
    pub livekit_key: String,
    /// LiveKit API secret the JWTs are signed with (prefer the environment variable).
    #[arg(
        long,
        env = "LIVEKIT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub livekit_secret: String,
    /// Where to check OpenID tokens of matrix_server_name NAME (repeatable). Unmapped names
    /// are checked at https://NAME.
    #[arg(long = "homeserver", value_name = "NAME=URL")]
    pub homeservers: Vec<String>,
    /// Homeservers whose users may create LiveKit rooms: comma list, or `*` for all.
    #[arg(long, value_name = "LIST", default_value = "*")]
    pub full_access_homeservers: String,
    /// HTTP base URL of the SFU's Twirp API; when set, rooms are created there for
    /// full-access users before their token is returned.
    #[arg(long, value_name = "URL")]
    pub sfu_admin_url: Option<String>,
    /// Allow plain http:// URLs whose host is a loopback IP (--homeserver, --sfu-admin-url).
    #[arg(long)]
    pub allow_insecure_loopback: bool,
    /// Also allow a --listen address in a private IPv4 range (10/8, 172.16/12, 192.168/16): a
    /// test network namespace's veth address. This service has no TLS: never on a shared network.
    #[arg(long)]
    pub allow_private_listen: bool,
}

/// Which homeservers' users may create rooms (`LIVEKIT_FULL_ACCESS_HOMESERVERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullAccess {
    All,
    Only(Vec<String>),
}

impl FullAccess {
    /// Parses a comma/space separated list; `*` as the only entry means everyone.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let names: Vec<String> = list
            .replace(',', " ")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        match names.as_slice() {
            [] => Err(ConfigError::EmptyFullAccess),
            [only] if only == "*" => Ok(Self::All),
            _ => Ok(Self::Only(names)),
        }
    }

    pub fn allows(&self, server_name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == server_name),
        }
    }
}

/// Everything the service needs, validated.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub livekit_url: String,
    pub keys: LiveKitKeys,
    pub homeservers: HashMap<String, Url>,
    pub full_access: FullAccess,
    pub sfu_admin_url: Option<Url>,
}

/// A flag that cannot be used; the message says what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--listen {0} is not a loopback address; this dev service binds only 127.0.0.0/8 or [::1] (or, with --allow-private-listen, a private IPv4 address)"
    )]
    ListenNotLoopback(SocketAddr),
    #[error("--livekit-url must not be empty")]
    EmptyLiveKitUrl,
    #[error("the LiveKit key is empty: pass --livekit-key or set LIVEKIT_KEY")]
    EmptyKey,
    #[error("the LiveKit secret is empty: pass --livekit-secret or set LIVEKIT_SECRET")]
    EmptySecret,
    #[error("--full-access-homeservers is empty: give a comma list of server names or `*`")]
    EmptyFullAccess,
    #[error("--homeserver {0:?} is not NAME=URL with NAME a server name (host[:port])")]
    HomeserverSyntax(String),
    #[error("--homeserver {0:?} is given twice")]
    DuplicateHomeserver(String),
    #[error("{flag} {url:?}: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: &'static str,
    },
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl Cli {
    /// The listen address and service configuration, or what is wrong with the flags.
    pub fn into_config(self) -> Result<(SocketAddr, ServiceConfig), ConfigError> {
        let private = match self.listen.ip() {
            IpAddr::V4(ip) => self.allow_private_listen && ip.is_private(),
            IpAddr::V6(_) => false,
        };
        if !self.listen.ip().is_loopback() && !private {
            return Err(ConfigError::ListenNotLoopback(self.listen));
        }
        if self.livekit_url.is_empty() {
            return Err(ConfigError::EmptyLiveKitUrl);
        }
        if self.livekit_key.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        if self.livekit_secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let insecure = self.allow_insecure_loopback;
        let mut homeservers = HashMap::new();
        for mapping in &self.homeservers {
            let (name, url) = mapping
                .split_once('=')
                .filter(|(name, _)| is_server_name(name))
                .ok_or_else(|| ConfigError::HomeserverSyntax(mapping.clone()))?;
            let url = check_url("--homeserver", url, insecure)?;
            if homeservers.insert(name.to_owned(), url).is_some() {
                return Err(ConfigError::DuplicateHomeserver(name.to_owned()));
            }
        }
        let sfu_admin_url = self
            .sfu_admin_url
            .as_deref()
            .map(|url| check_url("--sfu-admin-url", url, insecure))
            .transpose()?;
        let config = ServiceConfig {
            livekit_url: self.livekit_url,
            keys: LiveKitKeys {
                key: self.livekit_key,
                secret: Redacted::new(self.livekit_secret),
            },
            homeservers,
            full_access: FullAccess::parse(&self.full_access_homeservers)?,
            sfu_admin_url,
        };
        Ok((self.listen, config))
    }
}

/// An `https` URL, or an `http` URL to a loopback IP when `allow_insecure_loopback`.
fn check_url(
    flag: &'static str,
    url: &str,
    allow_insecure_loopback: bool,
) -> Result<Url, ConfigError> {
    let err = |reason| ConfigError::Url {
        flag,
        url: url.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|_| err("not a URL"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(err("a base URL takes no query or fragment"));
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(parsed),
        "http" => {
            let loopback = parsed
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback());
            if !loopback {
                Err(err(
                    "plain http is allowed only to a loopback IP (127.0.0.1 or [::1]); use https",
                ))
            } else if !allow_insecure_loopback {
                Err(err("plain http needs --allow-insecure-loopback"))
            } else {
                Ok(parsed)
            }
        }
        _ => Err(err("use an https:// (or loopback http://) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<(SocketAddr, ServiceConfig), ConfigError> {
        let mut args = vec![
            "mi-token-service",
            "--livekit-url",
            "ws://127.0.0.1:7880",
            "--livekit-key",
            "devkey",
            "--livekit-secret",
            "devsecret",
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend(extra);
        Cli::try_parse_from(args)
            .expect("flags parse")
            .into_config()
    }

    fn reason(r: Result<(SocketAddr, ServiceConfig), ConfigError>) -> String {
        match r {
            Ok(_) => "OK".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn private_listen_needs_the_flag_and_a_private_ipv4() {
        let flag = "--allow-private-listen";
        assert_eq!(reason(parse(&["--listen", "10.77.3.1:8090", flag])), "OK");
        assert!(reason(parse(&["--listen", "10.77.3.1:8090"])).contains(flag));
        for addr in ["0.0.0.0:8090", "8.8.8.8:8090", "[::]:8090"] {
            assert!(
                reason(parse(&["--listen", addr, flag])).contains("not a loopback address"),
                "{addr}"
            );
        }
    }

    #[test]
    fn listen_must_be_loopback() {
        for addr in ["127.0.0.1:8090", "127.1.2.3:0", "[::1]:8090"] {
            assert_eq!(reason(parse(&["--listen", addr])), "OK", "{addr}");
        }
        for addr in ["0.0.0.0:8090", "192.168.1.2:8090", "[::]:8090"] {
            assert!(
                reason(parse(&["--listen", addr])).contains("not a loopback address"),
                "{addr}"
            );
        }
        assert!(Cli::try_parse_from([
            "mi-token-service",
            "--listen",
            "localhost:8090",
            "--livekit-url",
            "ws://x",
            "--livekit-key",
            "k",
            "--livekit-secret",
            "s"
        ])
        .is_err());
    }

    #[test]
    fn defaults_give_everyone_full_access_and_no_room_creation() {
        let (addr, config) = parse(&[]).unwrap();
        assert_eq!(addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.full_access, FullAccess::All);
        assert!(config.sfu_admin_url.is_none());
        assert!(config.homeservers.is_empty());
        assert_eq!(config.livekit_url, "ws://127.0.0.1:7880");
        assert_eq!(config.keys.key, "devkey");
        assert_eq!(config.keys.secret.expose(), "devsecret");
    }

    #[test]
    fn plain_http_needs_a_loopback_ip_and_the_flag() {
        let hs = "example.com=http://127.0.0.1:8008";
        assert!(reason(parse(&["--homeserver", hs])).contains("--allow-insecure-loopback"));
        let (_, config) = parse(&["--homeserver", hs, "--allow-insecure-loopback"]).unwrap();
        assert_eq!(
            config.homeservers["example.com"].as_str(),
            "http://127.0.0.1:8008/"
        );
        for url in [
            "example.com=http://10.1.2.3:8008",
            "example.com=http://localhost:8008",
            "example.com=http://matrix.example.com",
        ] {
            assert!(
                reason(parse(&["--homeserver", url, "--allow-insecure-loopback"]))
                    .contains("only to a loopback IP"),
                "{url}"
            );
        }
        assert_eq!(
            reason(parse(&[
                "--homeserver",
                "example.com=http://[::1]:8008",
                "--allow-insecure-loopback"
            ])),
            "OK"
        );
        assert_eq!(
            reason(parse(&[
                "--homeserver",
                "example.com=https://matrix.example.com:8448"
            ])),
            "OK"
        );
        assert!(reason(parse(&["--sfu-admin-url", "http://127.0.0.1:7880"]))
            .contains("--allow-insecure-loopback"));
        assert_eq!(
            reason(parse(&[
                "--sfu-admin-url",
                "http://127.0.0.1:7880",
                "--allow-insecure-loopback"
            ])),
            "OK"
        );
        assert!(reason(parse(&["--sfu-admin-url", "ws://127.0.0.1:7880"])).contains("https://"));
    }

    #[test]
    fn malformed_homeserver_mappings_are_refused() {
        for bad in [
            "example.com",
            "=https://x",
            "bad/name=https://x",
            "example.com=not a url",
            "example.com=https://x/?q=1",
        ] {
            assert!(parse(&["--homeserver", bad]).is_err(), "{bad}");
        }
        let twice = parse(&[
            "--homeserver",
            "e.com=https://a",
            "--homeserver",
            "e.com=https://b",
        ]);
        assert!(reason(twice).contains("twice"));
    }

    #[test]
    fn full_access_list() {
        assert_eq!(FullAccess::parse("*").unwrap(), FullAccess::All);
        let some = FullAccess::parse("a.org, b.org c.org").unwrap();
        assert!(some.allows("a.org") && some.allows("b.org") && some.allows("c.org"));
        assert!(!some.allows("d.org"));
        // `*` only means everyone when it is the only entry, as in the real service.
        assert!(!FullAccess::parse("*,a.org").unwrap().allows("d.org"));
        assert!(FullAccess::parse(" , ").is_err());
    }

    #[test]
    fn empty_keys_are_refused() {
        let r = Cli::try_parse_from([
            "mi-token-service",
            "--listen",
            "127.0.0.1:0",
            "--livekit-url",
            "ws://x",
            "--livekit-key",
            "",
            "--livekit-secret",
            "s",
        ])
        .unwrap()
        .into_config();
        assert!(reason(r).contains("LIVEKIT_KEY"));
    }
}
