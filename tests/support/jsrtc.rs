//! The matrix-js-sdk MatrixRTC peer (`dev/jsrtc/rtc_peer.mjs`): finding node and the installed
//! js-sdk, starting the peer, and reading the media keys it reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use mi_test_sfu::testkit::{LineProcess, NetnsPair};
use serde_json::Value;

pub const JSRTC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/jsrtc");

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `node` (env `MI_NODE`, else on PATH) with the js-sdk installed by `scripts/setup.sh`
/// (`npm ci` in dev/jsrtc), or a loud skip; under `CI=true` a missing tool fails the test.
pub fn node_or_skip(test: &str) -> Option<PathBuf> {
    let node = std::env::var_os("MI_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let works = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let sdk = Path::new(JSRTC_DIR).join("node_modules/matrix-js-sdk/package.json");
    let missing = match (works, sdk.exists()) {
        (true, true) => return Some(node),
        (false, _) => format!("no working node ({})", node.display()),
        (true, false) => format!("{} missing (run scripts/setup.sh: npm ci)", sdk.display()),
    };
    assert!(!ci(), "{test}: CI is set but {missing}");
    eprintln!("SKIPPED {test}: {missing}");
    None
}

/// Starts the peer with `config` (see rtc_peer.mjs), inside network namespace `ns` if given.
pub fn spawn(node: &Path, ns: Option<&str>, config: &Value) -> LineProcess {
    let mut cmd = match ns {
        Some(ns) => NetnsPair::command_in(ns, node),
        None => Command::new(node),
    };
    cmd.arg(Path::new(JSRTC_DIR).join("rtc_peer.mjs"))
        .current_dir(JSRTC_DIR)
        .env("MI_JSRTC_CONFIG", config.to_string());
    LineProcess::spawn("jsrtc", cmd).expect("node started")
}

/// A media key js-sdk handed to its media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsKey {
    pub index: u8,
    pub key: Vec<u8>,
    /// The LiveKit identity js-sdk gives it (`rtcBackendIdentity`).
    pub identity: String,
}

fn parse_key(v: &Value) -> JsKey {
    JsKey {
        index: v["index"]
            .as_u64()
            .and_then(|i| u8::try_from(i).ok())
            .expect("index 0..=255"),
        key: base64::engine::general_purpose::STANDARD
            .decode(v["key"].as_str().unwrap_or_default())
            .expect("js-sdk key is base64"),
        identity: v["identity"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Every key the peer reported so far, in order: (reporting member, user, device, key).
pub fn keys(peer: &LineProcess) -> Vec<(String, String, String, JsKey)> {
    peer.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "key")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("who"), s("user_id"), s("device_id"), parse_key(&v))
        })
        .collect()
}

/// The last key member `who` reported for (user, device).
pub fn last_key(peer: &LineProcess, who: &str, user: &str, device: &str) -> Option<JsKey> {
    keys(peer)
        .into_iter()
        .rev()
        .find(|(w, u, d, _)| w == who && u == user && d == device)
        .map(|(_, _, _, k)| k)
}
