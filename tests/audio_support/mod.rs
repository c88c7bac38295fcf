//! Helpers for the audio tests: an alsa-lib configuration of `file`/`null` PCMs in a temp
//! `XDG_CONFIG_HOME` (written once per test process, before alsa-lib reads its config),
//! tone generation and Goertzel measurement.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const RATE: f32 = 48_000.0;

/// Writes `pcms` (alsa-lib config text; `@DIR@` is replaced by the temp dir) as the process's
/// user asoundrc and returns the temp dir. Only the first call in a process writes: alsa-lib
/// reads and caches its configuration once per process.
pub fn alsa_config(pcms: &str) -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("alsa")).unwrap();
        let text = pcms.replace("@DIR@", dir.path().to_str().unwrap());
        std::fs::write(dir.path().join("alsa/asoundrc"), text).unwrap();
        // SAFETY (edition 2021: safe fn): set before any thread touches alsa-lib.
        std::env::set_var("XDG_CONFIG_HOME", dir.path());
        dir
    })
    .path()
}

pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A sine of `freq` Hz with peak `amp`, `n` samples.
pub fn tone(freq: f32, amp: f32, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f32::consts::PI * freq * i as f32 / RATE).sin()).round() as i16)
        .collect()
}

pub fn write_raw(path: &Path, samples: &[i16]) {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

pub fn read_raw(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Amplitude (peak) of the `freq` component of `x` (Goertzel).
pub fn goertzel(x: &[i16], freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / RATE;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s = f64::from(v) + f64::from(c) * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - f64::from(c) * s1 * s2;
    (2.0 * power.sqrt() / x.len() as f64) as f32
}

pub fn rms(x: &[i16]) -> f32 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt() as f32
}

pub fn db(ratio: f32) -> f32 {
    20.0 * ratio.log10()
}

/// Waits for `cond` up to `secs` seconds, polling; returns whether it became true.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
        std::thread::park_timeout(std::time::Duration::from_millis(5));
    }
    cond()
}
