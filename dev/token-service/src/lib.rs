//! `mi-token-service`: a dev-only stand-in for `element-hq/lk-jwt-service`.
//!
//! Owns: the HTTP API a MatrixRTC client uses to trade a Matrix OpenID token for a LiveKit
//! JWT (`POST /sfu/get`, `POST /get_token`, `GET /healthz`), with the real service's request
//! decoding, error codes, room-alias and identity hashing, JWT grants and (for full-access
//! users) LiveKit room creation. Must not touch: anything of the device program; it never
//! binds anything but a loopback address and is never shipped.
//!
//! Deliberate deviations from the real service: homeservers are found through an explicit
//! `--homeserver NAME=URL` map or at `https://NAME` (no `.well-known`/SRV discovery);
//! delayed-leave delegation (`delay_id`, `/delegate_delayed_leave`, `/sfu_webhook`) is not
//! implemented — a full-access request asking for it gets the real service's "Unable to
//! resolve client-server API" answer; request bodies above 64 KiB get 413; JSON keys are
//! matched case-sensitively (Go matches them case-insensitively).

pub mod config;
pub mod error;
pub mod jwt;
pub mod naming;
pub mod openid;
pub mod redacted;
pub mod request;
pub mod server;
pub mod service;
pub mod sfu_admin;

pub use config::{Cli, ConfigError, ServiceConfig};
pub use error::MatrixError;
pub use server::Server;
pub use service::{Reply, Service};
