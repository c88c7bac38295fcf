//! matrix-intercom: a Matrix (Element Call / MatrixRTC) door intercom for Linux single-board computers.
//!
//! Layout (see README "Architecture"): [`machine`] decides, everything else is a driver at the edge.

pub mod audio;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gpio;
pub mod livekit;
pub mod logging;
pub mod machine;
pub mod matrix;
pub mod pcm;
pub mod provision;
pub mod secret;
pub mod systemd;
