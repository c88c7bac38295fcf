//! The device's configuration file: its schema, defaults and offline validation.
//!
//! Owns parsing and checking of `config.toml`; it must not touch the network or hardware.
//! Every key, its default and what it does is documented in `config.example.toml` at the
//! repository root, which is also what `matrix-intercom print-default-config` prints.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod load;
pub use load::{ConfigError, ConfigProblem, LoadedConfig};

/// The stored Matrix session inside `matrix.state_dir`.
pub const SESSION_FILE: &str = "session.json";

/// Where the daemon looks for its config unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/matrix-intercom/config.toml";
/// The commented example config, embedded in the binary.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config.example.toml");

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub matrix: MatrixConfig,
    #[serde(default)]
    pub button: ButtonConfig,
    #[serde(default)]
    pub led: Option<OutputLineConfig>,
    #[serde(default)]
    pub relay: Option<RelayConfig>,
    #[serde(default)]
    pub audio: AudioConfig,
    #[serde(default)]
    pub call: CallConfig,
    #[serde(default)]
    pub livekit: LivekitConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Base URL of the homeserver's client API, e.g. `https://matrix.example.org`.
    pub homeserver: String,
    /// Full Matrix user id of the device's account, e.g. `@frontdoor:example.org`.
    pub user_id: String,
    /// One-time password: used for the first login only, then removed from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Display name of the Matrix device (what residents see in their session list).
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// The room whose call the button joins: a room id (`!abc:example.org`) or alias (`#door:example.org`).
    pub room: String,
    /// Where the session (access token) and the Matrix store live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// A GPIO line: a chip (path like `/dev/gpiochip0`, name like `gpiochip0`, or label such as
/// `pinctrl-bcm2711`) and a line (offset or line name such as `GPIO17`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum LineRef {
    Offset(u32),
    Name(String),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Bias {
    #[default]
    PullUp,
    PullDown,
    Disabled,
    AsIs,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ButtonConfig {
    /// `false` disables the GPIO button (the control socket still works).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_chip")]
    pub chip: String,
    #[serde(default = "default_button_line")]
    pub line: LineRef,
    #[serde(default = "yes")]
    pub active_low: bool,
    #[serde(default)]
    pub bias: Bias,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u32,
}

impl Default for ButtonConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            chip: default_chip(),
            line: default_button_line(),
            active_low: true,
            bias: Bias::PullUp,
            debounce_ms: default_debounce_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputLineConfig {
    #[serde(default = "default_chip")]
    pub chip: String,
    pub line: LineRef,
    #[serde(default)]
    pub active_low: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default = "default_chip")]
    pub chip: String,
    pub line: LineRef,
    #[serde(default)]
    pub active_low: bool,
    /// How long the relay stays closed per opening, in milliseconds.
    #[serde(default = "default_relay_hold_ms")]
    pub hold_ms: u32,
    /// Matrix users allowed to open the door while a call is up.
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// ALSA capture device by stable name (`default`, `plughw:CARD=Device,DEV=0`, a dsnoop name).
    #[serde(default = "default_pcm")]
    pub capture: String,
    /// ALSA playback device by stable name.
    #[serde(default = "default_pcm")]
    pub playback: String,
    /// Playback volume in percent (0–100).
    #[serde(default = "default_volume")]
    pub volume: u8,
    /// Microphone gain in dB (-20 to +30).
    #[serde(default)]
    pub mic_gain_db: i8,
    #[serde(default = "yes")]
    pub echo_cancellation: bool,
    #[serde(default = "yes")]
    pub noise_suppression: bool,
    #[serde(default = "yes")]
    pub auto_gain: bool,
    /// Pace audio by the wall clock: for alsa-lib `file`/`null` devices, which have no clock.
    #[serde(default)]
    pub wall_clock: bool,
    #[serde(default)]
    pub sounds: SoundsConfig,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            capture: default_pcm(),
            playback: default_pcm(),
            volume: default_volume(),
            mic_gain_db: 0,
            echo_cancellation: true,
            noise_suppression: true,
            auto_gain: true,
            wall_clock: false,
            sounds: SoundsConfig::default(),
        }
    }
}

/// Optional WAV files replacing the built-in feedback sounds.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoundsConfig {
    pub button: Option<PathBuf>,
    pub ringing: Option<PathBuf>,
    pub joined: Option<PathBuf>,
    pub member_left: Option<PathBuf>,
    pub call_ended: Option<PathBuf>,
    pub no_answer: Option<PathBuf>,
    pub warning: Option<PathBuf>,
    pub incoming: Option<PathBuf>,
    pub error: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// Seconds to wait for someone to answer before leaving with the "no answer" sound.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_s: u32,
    /// Longest call in seconds; a warning sound plays before the device leaves.
    #[serde(default = "default_max_duration")]
    pub max_duration_s: u32,
    /// Seconds before the end of a call at which the warning plays.
    #[serde(default = "default_warning_before_end")]
    pub warning_before_end_s: u32,
    /// Seconds the device stays after the last other member left.
    #[serde(default = "default_leave_when_alone")]
    pub leave_when_alone_s: u32,
    /// Refuse to join calls in rooms without end-to-end encryption.
    #[serde(default)]
    pub require_encryption: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            ring_timeout_s: default_ring_timeout(),
            max_duration_s: default_max_duration(),
            warning_before_end_s: default_warning_before_end(),
            leave_when_alone_s: default_leave_when_alone(),
            require_encryption: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    /// `POST {service}/sfu/get` (Element Call's default).
    #[default]
    SfuGet,
    /// `POST {service}/get_token` (MSC4195).
    GetToken,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LivekitConfig {
    /// Overrides transport discovery: the lk-jwt-service base URL.
    pub service_url: Option<String>,
    #[serde(default)]
    pub token_endpoint: TokenEndpoint,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra CA certificate (PEM) trusted for the homeserver, token service and SFU.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_device_name() -> String {
    "matrix-intercom".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/matrix-intercom".into()
}
fn default_chip() -> String {
    "gpiochip0".into()
}
fn default_button_line() -> LineRef {
    LineRef::Name("GPIO17".into())
}
fn default_debounce_ms() -> u32 {
    20
}
fn default_relay_hold_ms() -> u32 {
    3000
}
fn default_pcm() -> String {
    "default".into()
}
fn default_volume() -> u8 {
    80
}
fn default_ring_timeout() -> u32 {
    60
}
fn default_max_duration() -> u32 {
    600
}
fn default_warning_before_end() -> u32 {
    10
}
fn default_leave_when_alone() -> u32 {
    5
}
fn default_socket() -> PathBuf {
    "/run/matrix-intercom/control.sock".into()
}
fn default_log_level() -> String {
    "info".into()
}
