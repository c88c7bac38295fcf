//! Dev-only LiveKit-compatible test SFU (never shipped in the device binary).
//!
//! Layers: [`room`] (sans-IO room core), [`media`] (str0m sessions per participant, sans-IO),
//! [`engine`] (the one UDP/IO loop joining both), [`server`] (HTTP, WebSocket signalling),
//! [`twirp`] (room service). [`testkit`] holds network-namespace helpers for integration tests.

pub mod auth;
pub mod engine;
pub mod http;
pub mod media;
pub mod room;
pub mod sdp;
pub mod server;
pub mod testkit;
pub mod twirp;
