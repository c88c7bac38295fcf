//! The in-repo test SFU (`dev/test-sfu`) run in-process on 127.0.0.1, plus tokens and its
//! Twirp room service. Stopped on drop.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};
use matrix_intercom::secret::Secret;
use mi_test_sfu::auth::Auth;
use mi_test_sfu::engine::Engine;
use mi_test_sfu::media::NetPlan;
use mi_test_sfu::server::{serve, Shared};

pub const KEY: &str = "devkey";
pub const SECRET: &str = "devsecret-devsecret-devsecret-00";

pub struct TestSfu {
    pub http: SocketAddr,
    /// The SFU's media socket.
    pub udp: SocketAddr,
    ns: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestSfu {
    /// Starts the SFU on its own runtime thread, bound to 127.0.0.1 only.
    pub fn start(auto_create: bool) -> Self {
        Self::start_on(IpAddr::from([127, 0, 0, 1]), None, auto_create)
    }

    /// Starts the SFU bound to and advertising only `ip`, inside network namespace `ns` if
    /// given (the runtime's threads inherit the namespace of the thread that builds it).
    pub fn start_on(ip: IpAddr, ns: Option<String>, auto_create: bool) -> Self {
        Self::start_advertising(ip, None, ns, auto_create)
    }

    /// As [`TestSfu::start_on`], but announcing `advertise` (same port) as the only ICE
    /// candidate instead of the bound address (e.g. a relay in front of it).
    pub fn start_advertising(
        ip: IpAddr,
        advertise: Option<IpAddr>,
        ns: Option<String>,
        auto_create: bool,
    ) -> Self {
        Self::start_full(ip, advertise, ns, auto_create, (0, 0))
    }

    /// A new SFU on the signalling and media addresses of one that is gone (a restarted
    /// server: same URL, same ICE candidate, none of the old sessions or rooms).
    pub fn restart_at(http: SocketAddr, udp: SocketAddr, auto_create: bool) -> Self {
        assert_eq!(http.ip(), udp.ip(), "one address for both sockets");
        Self::start_full(
            http.ip(),
            None,
            None,
            auto_create,
            (http.port(), udp.port()),
        )
    }

    /// Stops the SFU as if its process were killed: no `LeaveRequest`, every socket closed.
    pub fn kill(self) {
        drop(self);
    }

    fn start_full(
        ip: IpAddr,
        advertise: Option<IpAddr>,
        ns: Option<String>,
        auto_create: bool,
        (http_port, udp_port): (u16, u16),
    ) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let run = move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("SFU runtime");
            rt.block_on(async move {
                let udp = tokio::net::UdpSocket::bind((ip, udp_port))
                    .await
                    .expect("SFU UDP");
                let local = udp.local_addr().unwrap();
                let plan = NetPlan {
                    local,
                    advertise: vec![advertise.unwrap_or(local.ip())],
                };
                let (engine_tx, engine_rx) = tokio::sync::mpsc::unbounded_channel();
                let control = engine_tx.clone();
                let engine = tokio::spawn(Engine::new(udp, plan, auto_create).run(engine_rx));
                let listener = tokio::net::TcpListener::bind((ip, http_port))
                    .await
                    .expect("SFU TCP");
                let http = listener.local_addr().unwrap();
                let shared = Arc::new(Shared {
                    auth: Auth::new(KEY, SECRET),
                    engine: engine_tx,
                    sessions: AtomicUsize::new(0),
                    sessions_changed: tokio::sync::Notify::new(),
                });
                let server = tokio::spawn(serve(listener, shared.clone()));
                ready_tx.send((http, local)).unwrap();
                let graceful = stop_rx.await.unwrap_or(false);
                server.abort();
                if graceful {
                    // As the binary does on SIGTERM: SERVER_SHUTDOWN to everyone, then a
                    // bounded wait for the sessions to flush it.
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let _ = control.send(mi_test_sfu::engine::Command::Shutdown(done_tx));
                    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
                    let _ = tokio::time::timeout(Duration::from_secs(3), async {
                        while shared.sessions.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                            let changed = shared.sessions_changed.notified();
                            if shared.sessions.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                                break;
                            }
                            changed.await;
                        }
                    })
                    .await;
                }
                engine.abort();
            });
        };
        let sfu_ns = ns.clone();
        let thread = std::thread::spawn(move || match ns {
            Some(ns) => mi_test_sfu::testkit::NetnsPair::run_in(&ns, run).expect("enter namespace"),
            None => run(),
        });
        let (http, udp) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("SFU started");
        Self {
            http,
            udp,
            ns: sfu_ns,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.http)
    }

    /// `POST /twirp/livekit.RoomService/<method>` with a JSON body (blocking; from inside the
    /// SFU's namespace when it has one).
    pub fn twirp(&self, method: &str, room: &str, body: &str) -> (u16, String) {
        let auth = format!("Bearer {}", admin_token(room));
        let addr = self.http.to_string();
        let path = format!("/twirp/livekit.RoomService/{method}");
        let body = body.to_owned();
        let request = move || {
            mi_test_sfu::testkit::http_request(
                &addr,
                "POST",
                &path,
                &[
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .expect("twirp request")
        };
        match &self.ns {
            Some(ns) => mi_test_sfu::testkit::NetnsPair::run_in(ns, request).expect("namespace"),
            None => request(),
        }
    }
}

impl TestSfu {
    /// Shuts down like the binary on SIGTERM: every participant gets SERVER_SHUTDOWN.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestSfu {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn join_token(identity: &str, room: &str) -> Secret {
    Secret::new(
        AccessToken::with_api_key(KEY, SECRET)
            .with_identity(identity)
            .with_name(identity)
            .with_ttl(Duration::from_secs(600))
            .with_grants(VideoGrants {
                room_join: true,
                room: room.into(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                ..Default::default()
            })
            .to_jwt()
            .expect("token"),
    )
}

pub fn admin_token(room: &str) -> String {
    AccessToken::with_api_key(KEY, SECRET)
        .with_identity("admin")
        .with_ttl(Duration::from_secs(600))
        .with_grants(VideoGrants {
            room_create: true,
            room_list: true,
            room_admin: true,
            room: room.into(),
            ..Default::default()
        })
        .to_jwt()
        .expect("token")
}
