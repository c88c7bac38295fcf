//! Reading a config file and checking everything that can be checked offline.
//!
//! Every problem becomes one [`ConfigProblem`] that names the file, the key (and line where it
//! is known) and says what to write instead.

use super::{Config, LineRef};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// Dotted key path (`matrix.homeserver`), when the problem is about one key.
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be used. Each variant's message is one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: config file not found; create it (`matrix-intercom print-default-config > {}`) or pass --config PATH", .0.display(), .0.display())]
    Missing(PathBuf),
    #[error("{}: cannot read config file ({err}); make it readable by the service user (e.g. `chmod 0640` and group matrix-intercom)", .path.display())]
    Unreadable { path: PathBuf, err: io::Error },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(ps) => ps.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// A config that parsed and passed all offline checks, with non-fatal warnings.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
    pub warnings: Vec<ConfigProblem>,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing(path.to_path_buf()))
            }
            Err(err) => {
                return Err(ConfigError::Unreadable {
                    path: path.to_path_buf(),
                    err,
                })
            }
        };
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o600);
        let config = Self::parse(path, &text, mode)?;
        let mut warnings = Vec::new();
        if config.matrix.password.is_some()
            && config.matrix.state_dir.join(super::SESSION_FILE).exists()
        {
            warnings.push(ConfigProblem {
                file: path.to_path_buf(),
                key: Some("matrix.password".into()),
                line: find_key_line(&text, "matrix", "password"),
                message: "a session is already stored; remove the password from this file".into(),
            });
        }
        Ok(LoadedConfig {
            config,
            path: path.to_path_buf(),
            warnings,
        })
    }

    /// Parses and checks config text; `mode` is the file's permission bits.
    pub fn parse(path: &Path, text: &str, mode: u32) -> Result<Config, ConfigError> {
        let file = path.to_path_buf();
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let key = (path != "." && !path.is_empty()).then_some(path);
            ConfigError::Invalid(vec![ConfigProblem {
                file: file.clone(),
                key,
                line,
                message: explain_toml_error(inner.message()),
            }])
        })?;
        let problems = check(&config, text, mode)
            .into_iter()
            .map(|(key, message)| {
                let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
                ConfigProblem {
                    file: file.clone(),
                    line: find_key_line(text, section, leaf),
                    key: Some(key),
                    message,
                }
            })
            .collect::<Vec<_>>();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// One-line summary printed by `check-config`.
    pub fn summary(&self) -> String {
        let button = if self.button.enabled {
            format!(
                "button {}:{}",
                self.button.chip,
                line_ref(&self.button.line)
            )
        } else {
            "no GPIO button".into()
        };
        format!(
            "config OK: {} in {} via {}; {}; audio in {:?} out {:?}; control socket {}",
            self.matrix.user_id,
            self.matrix.room,
            self.matrix.homeserver,
            button,
            self.audio.capture,
            self.audio.playback,
            self.control.socket.display()
        )
    }
}

fn line_ref(l: &LineRef) -> String {
    match l {
        LineRef::Offset(n) => n.to_string(),
        LineRef::Name(s) => s.clone(),
    }
}

/// Makes serde/toml messages say what to write.
fn explain_toml_error(msg: &str) -> String {
    let msg = msg.trim().replace('\n', " ");
    if msg.starts_with("unknown field") {
        format!("{msg}; remove it or fix its spelling (see `matrix-intercom print-default-config`)")
    } else if msg.starts_with("missing field") {
        format!("{msg}; add it (see `matrix-intercom print-default-config`)")
    } else if msg.starts_with("invalid type") || msg.starts_with("unknown variant") {
        format!("{msg}; see `matrix-intercom print-default-config` for the expected value")
    } else {
        msg
    }
}

fn check_range(
    out: &mut Vec<(String, String)>,
    key: &str,
    value: i64,
    min: i64,
    max: i64,
    unit: &str,
) {
    if value < min || value > max {
        out.push((
            key.into(),
            format!("{value} is out of range; write a value from {min} to {max}{unit}"),
        ));
    }
}

fn check_line(out: &mut Vec<(String, String)>, section: &str, chip: &str, line: &LineRef) {
    if chip.trim().is_empty() {
        out.push((
            format!("{section}.chip"),
            "is empty; write a chip path, name or label such as \"gpiochip0\"".into(),
        ));
    }
    if let LineRef::Name(name) = line {
        if name.trim().is_empty() {
            out.push((
                format!("{section}.line"),
                "is empty; write an offset (17) or a line name (\"GPIO17\")".into(),
            ));
        }
    }
}

fn is_matrix_id(s: &str, sigil: char) -> bool {
    s.starts_with(sigil)
        && s[1..]
            .split_once(':')
            .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty())
}

/// Offline semantic checks; returns (key, message) pairs.
fn check(c: &Config, _text: &str, mode: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match url::Url::parse(&c.matrix.homeserver) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => out.push((
            "matrix.homeserver".into(),
            format!(
                "{:?} is not an http(s) URL; write e.g. \"https://matrix.example.org\"",
                c.matrix.homeserver
            ),
        )),
    }
    if !is_matrix_id(&c.matrix.user_id, '@') {
        out.push((
            "matrix.user_id".into(),
            format!(
                "{:?} is not a Matrix user id; write e.g. \"@frontdoor:example.org\"",
                c.matrix.user_id
            ),
        ));
    }
    if !(is_matrix_id(&c.matrix.room, '!') || is_matrix_id(&c.matrix.room, '#')) {
        out.push((
            "matrix.room".into(),
            format!(
                "{:?} is neither a room id nor an alias; write \"!abc:example.org\" or \"#door:example.org\"",
                c.matrix.room
            ),
        ));
    }
    if let Some(pw) = &c.matrix.password {
        if pw.is_empty() {
            out.push((
                "matrix.password".into(),
                "is empty; write the account's password or remove the key".into(),
            ));
        } else if mode & 0o004 != 0 {
            out.push((
                "matrix.password".into(),
                format!(
                    "the file holds a password but is world-readable (mode {:o}); run `chmod 0600` on it",
                    mode & 0o777
                ),
            ));
        }
    }
    if c.matrix.device_name.trim().is_empty() {
        out.push((
            "matrix.device_name".into(),
            "is empty; write a name such as \"Front door intercom\"".into(),
        ));
    }
    if c.button.enabled {
        check_line(&mut out, "button", &c.button.chip, &c.button.line);
    }
    check_range(
        &mut out,
        "button.debounce_ms",
        c.button.debounce_ms.into(),
        0,
        1000,
        " ms",
    );
    if let Some(led) = &c.led {
        check_line(&mut out, "led", &led.chip, &led.line);
    }
    if let Some(relay) = &c.relay {
        check_line(&mut out, "relay", &relay.chip, &relay.line);
        check_range(
            &mut out,
            "relay.hold_ms",
            relay.hold_ms.into(),
            100,
            30_000,
            " ms",
        );
        for user in &relay.allowed_users {
            if !is_matrix_id(user, '@') {
                out.push((
                    "relay.allowed_users".into(),
                    format!("{user:?} is not a Matrix user id; write e.g. \"@alice:example.org\""),
                ));
            }
        }
    }
    for (key, dev) in [
        ("audio.capture", &c.audio.capture),
        ("audio.playback", &c.audio.playback),
    ] {
        if dev.trim().is_empty() {
            out.push((
                key.into(),
                "is empty; write an ALSA device name such as \"default\" (see `matrix-intercom list-audio`)".into(),
            ));
        } else if dev.starts_with("hw:") && dev[3..].starts_with(|ch: char| ch.is_ascii_digit())
            || dev.starts_with("plughw:") && dev[7..].starts_with(|ch: char| ch.is_ascii_digit())
        {
            out.push((
                key.into(),
                format!("{dev:?} selects the card by number, which changes between boots; write \"plughw:CARD=<name>,DEV=0\" (see `matrix-intercom list-audio`)"),
            ));
        }
    }
    check_range(
        &mut out,
        "audio.volume",
        c.audio.volume.into(),
        0,
        100,
        " %",
    );
    check_range(
        &mut out,
        "audio.mic_gain_db",
        c.audio.mic_gain_db.into(),
        -20,
        30,
        " dB",
    );
    check_range(
        &mut out,
        "call.ring_timeout_s",
        c.call.ring_timeout_s.into(),
        5,
        600,
        " s",
    );
    check_range(
        &mut out,
        "call.max_duration_s",
        c.call.max_duration_s.into(),
        30,
        86_400,
        " s",
    );
    check_range(
        &mut out,
        "call.leave_when_alone_s",
        c.call.leave_when_alone_s.into(),
        0,
        300,
        " s",
    );
    check_range(
        &mut out,
        "call.warning_before_end_s",
        c.call.warning_before_end_s.into(),
        0,
        300,
        " s",
    );
    if c.call.warning_before_end_s >= c.call.max_duration_s {
        out.push((
            "call.warning_before_end_s".into(),
            format!(
                "must be less than call.max_duration_s ({}); write a smaller value",
                c.call.max_duration_s
            ),
        ));
    }
    if let Some(url) = &c.livekit.service_url {
        if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            out.push((
                "livekit.service_url".into(),
                format!("{url:?} is not an http(s) URL; write e.g. \"https://rtc.example.org/livekit/jwt\""),
            ));
        }
    }
    if let Some(ca) = &c.tls.ca_file {
        if !ca.is_file() {
            out.push((
                "tls.ca_file".into(),
                format!(
                    "{} does not exist; write the path of a PEM certificate or remove the key",
                    ca.display()
                ),
            ));
        }
    }
    if let Err(e) = c.log.level.parse::<tracing::level_filters::LevelFilter>() {
        out.push((
            "log.level".into(),
            format!(
                "{:?}: {e}; write error, warn, info, debug or trace",
                c.log.level
            ),
        ));
    }
    if c.control.socket.as_os_str().is_empty() || c.control.socket.is_relative() {
        out.push((
            "control.socket".into(),
            "must be an absolute path such as \"/run/matrix-intercom/control.sock\"".into(),
        ));
    }
    out
}

/// Finds the 1-based line of `key` inside `[section]` (or at top level for ""), if present.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest.trim_end_matches(']').trim().to_string();
            continue;
        }
        if current == section {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}
