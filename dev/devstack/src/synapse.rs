//! Synapse for the dev stack: the files in the working directory (config, log config, signing
//! key) and the command that runs it, plus the readiness probe. Owns the Synapse configuration
//! only; it does not register users or create rooms (see [`crate::matrix`]) and does not manage
//! the process (see [`crate::process`]).
//!
//! The config is written as JSON, which YAML parsers (Synapse's) accept as YAML.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use matrix_intercom::secret::{write_private_atomic, Secret};
use serde_json::{json, Value};

use crate::random;

/// File names inside the working directory.
pub const CONFIG_FILE: &str = "homeserver.yaml";
pub const LOG_CONFIG_FILE: &str = "log.config.yaml";
pub const SIGNING_KEY_FILE: &str = "signing.key";
pub const DATABASE_FILE: &str = "homeserver.db";
pub const LOG_FILE: &str = "synapse.log";
/// Synapse's own stdout/stderr (startup errors land here, not in [`LOG_FILE`]).
pub const OUTPUT_FILE: &str = "synapse.out";

/// What the generated config depends on.
pub struct SynapseSettings<'a> {
    pub dir: &'a Path,
    pub server_name: &'a str,
    pub port: u16,
    /// Synapse listens on 127.0.0.1 and this address; its public base URL uses it.
    pub bind: std::net::IpAddr,
    /// Advertised as the only MatrixRTC transport (`livekit_service_url`).
    pub token_service_url: &'a str,
    pub registration_shared_secret: &'a Secret,
    /// Log every HTTP request (`synapse.access`); off by default because request paths carry
    /// delay ids.
    pub access_log: bool,
}

/// Writing Synapse's files failed.
#[derive(Debug, thiserror::Error)]
pub enum SynapseError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read random bytes for the signing key: {0}")]
    Random(std::io::Error),
    #[error("Synapse exited during start-up ({status}); see {output} and {log}; its last output:\n{output_tail}")]
    Exited {
        status: String,
        output: PathBuf,
        log: PathBuf,
        output_tail: String,
    },
    #[error(
        "Synapse did not answer /_matrix/client/versions within {secs} s; see {output} and {log}"
    )]
    NotReady {
        secs: u64,
        output: PathBuf,
        log: PathBuf,
    },
}

/// The homeserver config as JSON.
pub fn config(s: &SynapseSettings<'_>) -> Value {
    let dir = s.dir;
    let transport = json!({"type": "livekit", "livekit_service_url": s.token_service_url});
    // Far above anything a test or the 5 s delayed-event restart loop does.
    let loose = json!({"per_second": 1000, "burst_count": 1000});
    let mut bind = vec!["127.0.0.1".to_owned()];
    if !s.bind.is_loopback() {
        bind.push(s.bind.to_string());
    }
    json!({
        "server_name": s.server_name,
        "public_baseurl": format!("http://{}/", std::net::SocketAddr::new(s.bind, s.port)),
        "serve_client_wellknown": true,
        "extra_well_known_client_content": {"org.matrix.msc4143.rtc_foci": [transport]},
        "pid_file": dir.join("homeserver.pid"),
        "listeners": [{
            "port": s.port,
            "type": "http",
            "tls": false,
            "x_forwarded": false,
            "bind_addresses": bind,
            "resources": [{"names": ["client", "federation", "openid"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": dir.join(DATABASE_FILE)}},
        "log_config": dir.join(LOG_CONFIG_FILE),
        "media_store_path": dir.join("media"),
        "max_upload_size": "10M",
        "url_preview_enabled": false,
        "enable_metrics": false,
        "report_stats": false,
        "signing_key_path": dir.join(SIGNING_KEY_FILE),
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "registration_shared_secret": s.registration_shared_secret.expose(),
        "enable_registration": false,
        "bcrypt_rounds": 4,
        "presence": {"enabled": false},
        "experimental_features": {"msc4143_enabled": true, "msc4222_enabled": true},
        "max_event_delay_duration": "24h",
        "matrix_rtc": {"transports": [transport]},
        "rc_message": loose,
        "rc_registration": loose,
        "rc_login": {"address": loose, "account": loose, "failed_attempts": loose},
        "rc_joins": {"local": loose, "remote": loose},
        "rc_joins_per_room": loose,
        "rc_invites": {"per_room": loose, "per_user": loose, "per_issuer": loose},
        "rc_delayed_event_mgmt": loose,
        "rc_room_creation": loose,
        "rc_key_requests": loose,
        "rc_media_create": loose,
        "rc_presence": {"per_user": loose},
        "rc_profile": loose,
        "rc_user_directory": loose,
        "rc_reports": loose,
        "rc_admin_redaction": loose,
        "rc_3pid_validation": loose,
        "rc_third_party_invite": loose,
    })
}

/// Python logging config: everything at INFO into [`LOG_FILE`].
pub fn log_config(dir: &Path, access_log: bool) -> Value {
    json!({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
        "handlers": {"file": {
            "class": "logging.FileHandler",
            "formatter": "precise",
            "filename": dir.join(LOG_FILE),
            "encoding": "utf8",
        }},
        "loggers": {
            "synapse.storage.SQL": {"level": "WARNING"},
            "synapse.access": {"level": if access_log { "INFO" } else { "WARNING" }},
        },
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": false,
    })
}

/// Writes config and log config (mode 0600: the config holds the shared secret) and creates the
/// signing key unless one exists from an earlier run.
pub fn write_files(s: &SynapseSettings<'_>) -> Result<(), SynapseError> {
    write_json(&s.dir.join(CONFIG_FILE), &config(s))?;
    write_json(
        &s.dir.join(LOG_CONFIG_FILE),
        &log_config(s.dir, s.access_log),
    )?;
    let key_path = s.dir.join(SIGNING_KEY_FILE);
    if !key_path.exists() {
        let seed = random::bytes(32).map_err(SynapseError::Random)?;
        let version = random::alphanumeric(4).map_err(SynapseError::Random)?;
        let line = format!(
            "ed25519 a_{version} {}\n",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed)
        );
        write_private_atomic(&key_path, line.as_bytes()).map_err(|source| SynapseError::Write {
            path: key_path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<(), SynapseError> {
    let text = serde_json::to_vec_pretty(value).expect("JSON values always serialize");
    write_private_atomic(path, &text).map_err(|source| SynapseError::Write {
        path: path.to_owned(),
        source,
    })
}

/// `python -m synapse.app.homeserver -c DIR/homeserver.yaml`, run inside `dir`.
pub fn command(python: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("-m")
        .arg("synapse.app.homeserver")
        .arg("-c")
        .arg(dir.join(CONFIG_FILE))
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Polls `/_matrix/client/versions` until it answers 200, Synapse exits (`exited` returns its
/// status) or `timeout` passes. Returns how long it took.
pub async fn wait_ready(
    http: &reqwest::Client,
    base_url: &str,
    dir: &Path,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<Duration, SynapseError> {
    let start = Instant::now();
    let url = format!("{base_url}/_matrix/client/versions");
    loop {
        if let Some(status) = exited() {
            return Err(SynapseError::Exited {
                status,
                output: dir.join(OUTPUT_FILE),
                log: dir.join(LOG_FILE),
                output_tail: crate::process::tail(&dir.join(OUTPUT_FILE), 15),
            });
        }
        let probe = http.get(&url).timeout(Duration::from_secs(2)).send().await;
        if matches!(probe, Ok(ref r) if r.status().is_success()) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(SynapseError::NotReady {
                secs: timeout.as_secs(),
                output: dir.join(OUTPUT_FILE),
                log: dir.join(LOG_FILE),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_enables_matrixrtc_and_advertises_the_token_service() {
        let secret = Secret::new("s3cret");
        let cfg = config(&SynapseSettings {
            dir: Path::new("/tmp/d"),
            server_name: "localhost",
            port: 18008,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            token_service_url: "http://127.0.0.1:18090",
            registration_shared_secret: &secret,
            access_log: false,
        });
        assert_eq!(cfg["experimental_features"]["msc4143_enabled"], true);
        assert_eq!(cfg["max_event_delay_duration"], "24h");
        let transport = json!({"type": "livekit", "livekit_service_url": "http://127.0.0.1:18090"});
        assert_eq!(cfg["matrix_rtc"]["transports"][0], transport);
        assert_eq!(
            cfg["extra_well_known_client_content"]["org.matrix.msc4143.rtc_foci"][0],
            transport
        );
        assert_eq!(cfg["listeners"][0]["bind_addresses"], json!(["127.0.0.1"]));
        assert_eq!(cfg["listeners"][0]["port"], 18008);
        assert_eq!(cfg["registration_shared_secret"], "s3cret");
    }
}
