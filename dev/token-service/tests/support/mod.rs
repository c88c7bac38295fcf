//! Fakes for the token service's two outside systems, on 127.0.0.1 ephemeral ports: a
//! homeserver's OpenID userinfo endpoint and an SFU's Twirp `CreateRoom`. Each runs as a task
//! of the test's runtime and stops with it.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mi_token_service::config::FullAccess;
use mi_token_service::jwt::LiveKitKeys;
use mi_token_service::redacted::Redacted;
use mi_token_service::ServiceConfig;
use tokio::net::TcpListener;

pub const KEY: &str = "devkey";
pub const SECRET: &str = "dev-secret-0123456789abcdef0123456789";
pub const LIVEKIT_URL: &str = "ws://127.0.0.1:7880/livekit/sfu";

/// A request a fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// A fake HTTP server on 127.0.0.1 that records requests and answers with `handler`.
pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub async fn start(handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let (parts, body) = req.into_parts();
                            let header = |name| {
                                parts
                                    .headers
                                    .get(name)
                                    .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let seen = Seen {
                                method: parts.method.to_string(),
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                authorization: header("authorization"),
                                content_type: header("content-type"),
                                body: body.collect().await.unwrap().to_bytes().to_vec(),
                            };
                            let (status, body) = handler(&seen);
                            recorded.lock().unwrap().push(seen);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The query parameter `name` of a recorded request, percent-decoded.
pub fn query_param(seen: &Seen, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x{}", seen.path_and_query)).ok()?;
    let value = url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned());
    value
}

/// A homeserver whose userinfo endpoint knows `tokens` (OpenID token → user id).
pub async fn fake_homeserver(tokens: &[(&str, &str)]) -> Fake {
    let tokens: HashMap<String, String> = tokens
        .iter()
        .map(|(t, u)| (t.to_string(), u.to_string()))
        .collect();
    Fake::start(move |seen| {
        if seen.method != "GET"
            || !seen
                .path_and_query
                .starts_with("/_matrix/federation/v1/openid/userinfo?")
        {
            return (404, r#"{"errcode":"M_UNRECOGNIZED"}"#.into());
        }
        match query_param(seen, "access_token").and_then(|t| tokens.get(&t)) {
            Some(user) => (200, serde_json::json!({ "sub": user }).to_string()),
            None => (
                401,
                r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Access Token unknown or expired"}"#.into(),
            ),
        }
    })
    .await
}

/// An SFU whose `CreateRoom` answers `status`.
pub async fn fake_sfu(status: u16) -> Fake {
    Fake::start(move |seen| {
        let body = if status == 200 {
            let req: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
            serde_json::json!({ "sid": "RM_fake", "name": req["name"] }).to_string()
        } else {
            r#"{"code":"internal","msg":"fake failure"}"#.to_owned()
        };
        (status, body)
    })
    .await
}

/// A configuration whose `example.com` is the fake homeserver at `hs`.
pub fn config(hs: &Fake) -> ServiceConfig {
    ServiceConfig {
        livekit_url: LIVEKIT_URL.to_owned(),
        keys: LiveKitKeys {
            key: KEY.to_owned(),
            secret: Redacted::new(SECRET),
        },
        homeservers: HashMap::from([(
            "example.com".to_owned(),
            reqwest::Url::parse(&hs.url()).unwrap(),
        )]),
        full_access: FullAccess::All,
        sfu_admin_url: None,
    }
}
