//! mi-devstack: the local development stack of matrix-intercom (never shipped on the device).
//!
//! The `mi-devstack` binary starts, on loopback, a real Synapse with MatrixRTC enabled, the
//! token service (`mi-token-service`) and the test SFU (`mi-test-sfu`), registers the accounts,
//! creates the door room and writes everything into ONE JSON file (mode 0600, written
//! atomically), then runs until SIGTERM/SIGINT (or end of stdin with `--stop-on-stdin-eof`),
//! stopping every process it started. Tests use [`DevStack::start`].
//!
//! ```text
//! mi-devstack --dir DIR [--python PATH] [--synapse-port 8008] [--token-port 8090]
//!             [--http-bind 127.0.0.1] [--sfu-port 7880] [--sfu-udp-port 7882] [--sfu-bind 127.0.0.1]
//!             [--sfu-advertise IP]
//!             [--token-service PATH] [--sfu PATH] [--out DIR/stack.json] [--encrypted-room]
//!             [--stop-on-stdin-eof] [--synapse-access-log]
//! ```
//!
//! In a test (the `mi-devstack`, `mi-token-service` and `mi-test-sfu` binaries must be built,
//! e.g. by `cargo test --workspace`; otherwise set `MI_DEVSTACK_BIN`):
//!
//! ```no_run
//! use mi_devstack::{DevStack, DevStackOptions};
//! # fn main() -> Result<(), mi_devstack::StartError> {
//! let Some(python) = mi_devstack::test_python_or_skip("door_rings") else { return Ok(()) };
//! let stack = DevStack::start(DevStackOptions {
//!     python: Some(python),
//!     encrypted_room: true,
//!     ..DevStackOptions::default()
//! })?;
//! let hs = &stack.info.homeserver_url;
//! let device = &stack.info.users.intercom; // log in with device.password.expose()
//! # let _ = (hs, device);
//! # Ok(()) }
//! // Dropping `stack` stops Synapse and the helpers and deletes the temporary directory.
//! ```
//!
//! # The stack file (schema version 1)
//!
//! Stable keys; new keys may be added, none renamed or removed without bumping `version`.
//! Parse it with [`StackInfo`].
//!
//! ```json
//! {
//!   "version": 1,
//!   "dir": "/abs/DIR",
//!   "server_name": "localhost",
//!   "homeserver_url": "http://127.0.0.1:8008",
//!   "registration_shared_secret": "…",
//!   "synapse_log": "/abs/DIR/synapse.log",
//!   "users": {
//!     "intercom": {"user_id": "@intercom:localhost", "password": "…", "access_token": null, "device_id": null},
//!     "alice": {"user_id": "@alice:localhost", "password": "…", "access_token": "…", "device_id": "ABCDEF"},
//!     "bob": {"user_id": "@bob:localhost", "password": "…", "access_token": "…", "device_id": "GHIJKL"}
//!   },
//!   "room_id": "!…:localhost",
//!   "room_alias": "#door:localhost",
//!   "encrypted_room_id": null,
//!   "encrypted_room_alias": null,
//!   "livekit": {"url": "ws://127.0.0.1:7880", "key": "devkey…", "secret": "…"},
//!   "token_service_url": "http://127.0.0.1:8090",
//!   "sfu_admin_url": "http://127.0.0.1:7880",
//!   "pids": {"devstack": 100, "synapse": 101, "token_service": 103, "sfu": 102}
//! }
//! ```
//!
//! - `intercom` is the device's account: it has no open session (the device logs in itself
//!   with the password). Residents have a session of their own for this run.
//! - Both rooms are private (`private_chat`), created by alice (the creator: full power, in room
//!   version 12 not listed in `users`); bob and intercom are joined. Power levels: `events["org.matrix.msc3401.call.member"] = 0` and
//!   `events["org.matrix.msc4075.rtc.notification"] = 0`, `users_default` 0.
//! - `encrypted_room_*` are set only with `--encrypted-room` (`m.room.encryption` megolm).
//! - `pids.token_service` / `pids.sfu` are `null` when that binary was missing and not started
//!   (the URLs are still filled in: Synapse advertises the token service URL regardless).
//! - The file is removed when the stack stops.
//!
//! `--http-bind IP` (default 127.0.0.1) moves the token service to IP and adds IP to Synapse's
//! listener; `homeserver_url`, `token_service_url` and Synapse's advertised transport then use IP
//! (for clients outside the namespace's loopback, e.g. a QEMU guest or a second namespace).
//!
//! Helpers: `mi-test-sfu --listen BIND:SFU_PORT --udp BIND:UDP_PORT --advertise ADVERTISE --key K
//! --secret S` and `mi-token-service --listen HTTP_BIND:TOKEN_PORT --livekit-url ws://ADVERTISE:SFU_PORT
//! --livekit-key K --homeserver localhost=http://127.0.0.1:SYNAPSE_PORT --allow-insecure-loopback
//! --sfu-admin-url http://BIND:SFU_PORT` with `LIVEKIT_SECRET=S` in its environment; both are
//! ready once they print `listening on`; their output is copied to stderr as `[sfu] …` /
//! `[token-service] …`. A missing binary is skipped with a loud warning.
//!
//! Synapse: `server_name` `localhost`, sqlite, one listener on 127.0.0.1 (and HTTP_BIND) with `client`,
//! `federation` and `openid`; `experimental_features.msc4143_enabled`/`msc4222_enabled`,
//! `max_event_delay_duration: 24h` (MSC4140), loosened rate limits, `matrix_rtc.transports` =
//! the token service, `.well-known/matrix/client` with `org.matrix.msc4143.rtc_foci`.
//! A working directory is reused: signing key, database and `credentials.json` (passwords)
//! survive, users log in again, the rooms are found by alias.

pub mod handle;
pub mod helpers;
pub mod info;
pub mod matrix;
pub mod ports;
pub mod process;
pub mod provision;
pub mod random;
pub mod run;
pub mod synapse;

pub use handle::{
    test_python, test_python_or_skip, DevStack, DevStackHandle, DevStackOptions, StartError,
};
pub use info::{LiveKit, Pids, StackInfo, User, Users, SCHEMA_VERSION};
