//! Shared helpers of the Matrix integration tests (`matrix_call`, `matrix_session`): the dev
//! stack, the device's config, a resident speaking plain HTTP, bounded waits, a cuttable
//! proxy and a log buffer.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_intercom::config::Config;
use matrix_intercom::matrix::membership::state_key;
use matrix_intercom::matrix::MatrixEvent;
use mi_devstack::{DevStack, DevStackHandle, DevStackOptions};
use serde_json::Value;
use tokio::sync::mpsc;

pub const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";

pub fn stack(test: &str) -> Option<DevStackHandle> {
    let python = mi_devstack::test_python_or_skip(test)?;
    let opts = DevStackOptions {
        python: Some(python),
        ..Default::default()
    };
    Some(DevStack::start(opts).unwrap_or_else(|e| panic!("dev stack: {e}")))
}

pub fn device_config(stack: &DevStackHandle, state_dir: &Path, with_password: bool) -> Config {
    let info = &stack.info;
    let mut text = format!(
        "[matrix]\nhomeserver = {:?}\nuser_id = {:?}\nroom = {:?}\nstate_dir = {:?}\n",
        info.homeserver_url,
        info.users.intercom.user_id,
        info.room_alias,
        state_dir.display().to_string(),
    );
    if with_password {
        text.push_str(&format!(
            "password = {:?}\n",
            info.users.intercom.password.expose()
        ));
    }
    toml::from_str(&text).expect("test config parses")
}

/// A client speaking plain HTTP with an access token (a resident, or the device's own token
/// to look at its delayed events).
pub struct Http {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
}

impl Http {
    pub fn alice(stack: &DevStackHandle) -> Self {
        let u = &stack.info.users.alice;
        Self {
            http: reqwest::Client::new(),
            base: stack.info.homeserver_url.clone(),
            token: u
                .access_token
                .as_ref()
                .expect("alice has a session")
                .expose()
                .to_owned(),
            user_id: u.user_id.clone(),
            device_id: u.device_id.clone().expect("alice has a device"),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("homeserver reachable");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// All state events of the room.
    pub async fn state(&self, room: &str) -> Vec<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/state"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn membership_of(&self, room: &str, key: &str) -> Option<Value> {
        self.state(room)
            .await
            .into_iter()
            .find(|e| e["type"] == CALL_MEMBER && e["state_key"] == key)
    }

    pub async fn put_membership(&self, room: &str, content: Value) {
        let key = state_key(&self.user_id, &self.device_id);
        let (status, v) = self
            .call(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{key}"),
                Some(content),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }

    pub async fn recent_events(&self, room: &str) -> Vec<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["chunk"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `check` every 250 ms until it returns `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for an event matching `want`, returning everything received up to it.
pub async fn expect_event(
    rx: &mut mpsc::Receiver<MatrixEvent>,
    within: Duration,
    want: impl Fn(&MatrixEvent) -> bool,
) -> Vec<MatrixEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                let hit = want(&e);
                seen.push(e);
                if hit {
                    return seen;
                }
            }
            Ok(None) => panic!("event channel closed; got {seen:?}"),
            Err(_) => panic!("timed out after {within:?}; got {seen:?}"),
        }
    }
}

/// The device's delayed events, as the homeserver lists them.
pub async fn delayed_events(me: &Http) -> Vec<Value> {
    let (status, v) = me
        .call(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["delayed_events"].as_array().cloned().unwrap_or_default()
}

/// A loopback TCP proxy to the homeserver that can be cut (open connections dropped, new ones
/// refused) and restored.
pub struct Proxy {
    pub url: String,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, up_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    continue; // dropped: connection refused in effect
                }
                let mut down = up_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { url, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
