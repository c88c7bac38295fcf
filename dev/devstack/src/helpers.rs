//! Command lines of the two other dev binaries the stack runs: `mi-test-sfu` (LiveKit-compatible
//! SFU) and `mi-token-service` (lk-jwt-service stand-in), and where their binaries are found.
//! Owns only how they are invoked; their lifetime is [`crate::process`]'s.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use matrix_intercom::secret::Secret;

/// Line both print once they accept connections.
pub const READY_MARKER: &str = "listening on";

/// What the helpers are told.
pub struct HelperSettings<'a> {
    /// SFU signalling/admin TCP address and media UDP address.
    pub sfu_listen: SocketAddr,
    pub sfu_udp: SocketAddr,
    /// Address the SFU announces to clients.
    pub sfu_advertise: IpAddr,
    pub token_listen: SocketAddr,
    /// `ws://…` URL the token service hands to clients.
    pub livekit_url: &'a str,
    pub livekit_key: &'a str,
    pub livekit_secret: &'a Secret,
    pub server_name: &'a str,
    pub homeserver_url: &'a str,
    pub sfu_admin_url: &'a str,
}

/// The binary given by a flag, else `name` next to this executable.
pub fn binary(flag: Option<&Path>, name: &str) -> std::io::Result<PathBuf> {
    match flag {
        Some(path) => Ok(path.to_owned()),
        None => Ok(std::env::current_exe()?.with_file_name(name)),
    }
}

/// `mi-test-sfu --listen … --udp … --advertise … --key … --secret …`.
pub fn sfu_command(bin: &Path, s: &HelperSettings<'_>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(s.sfu_listen.to_string())
        .arg("--udp")
        .arg(s.sfu_udp.to_string())
        .arg("--advertise")
        .arg(s.sfu_advertise.to_string())
        .arg("--key")
        .arg(s.livekit_key)
        .arg("--secret")
        .arg(s.livekit_secret.expose());
    cmd
}

/// `mi-token-service --listen … --livekit-url … --livekit-key … --homeserver NAME=URL
/// --allow-insecure-loopback [--allow-private-listen] --sfu-admin-url …`, with `LIVEKIT_SECRET` in its environment.
/// The SFU admin URL is passed only when the SFU listens on loopback (the token service talks
/// plain HTTP to loopback only); elsewhere, e.g. on a test namespace's veth address, the SFU
/// creates rooms on the first join.
pub fn token_service_command(bin: &Path, s: &HelperSettings<'_>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(s.token_listen.to_string())
        .arg("--livekit-url")
        .arg(s.livekit_url)
        .arg("--livekit-key")
        .arg(s.livekit_key)
        // Its environment, unlike its command line, is not readable by other users.
        .env("LIVEKIT_SECRET", s.livekit_secret.expose())
        .arg("--homeserver")
        .arg(format!("{}={}", s.server_name, s.homeserver_url))
        .arg("--allow-insecure-loopback");
    if !s.token_listen.ip().is_loopback() {
        cmd.arg("--allow-private-listen");
    }
    if s.sfu_listen.ip().is_loopback() {
        cmd.arg("--sfu-admin-url").arg(s.sfu_admin_url);
    }
    cmd
}
