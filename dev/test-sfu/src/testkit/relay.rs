//! A QEMU-slirp look-alike relay (UDP + TCP from a public address to 127.0.0.1).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use super::netns::enter_ns;
use super::TestkitError;

/// A QEMU-slirp look-alike inside a namespace: UDP and TCP arriving at `public_ip:port` are
/// relayed to `127.0.0.1:port`, so the server sees every client as a loopback source while it
/// advertises `public_ip` (the way a QEMU guest reaches the host's loopback as 10.0.2.2).
/// Threads stop on Drop (bounded by short poll timeouts).
pub struct LoopbackRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoopbackRelay {
    pub fn start(
        ns: &str,
        public_ip: &str,
        udp_port: u16,
        tcp_port: u16,
    ) -> Result<Self, TestkitError> {
        use std::net::{SocketAddr, TcpListener, UdpSocket};
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let tick = Some(Duration::from_millis(5));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), TestkitError>>();
        let mut threads = Vec::new();
        let io = |err| TestkitError::Spawn {
            what: "relay".into(),
            err,
        };

        let (ns_u, ip_u, stop_u, ready_u) = (
            ns.to_string(),
            public_ip.to_string(),
            stop.clone(),
            ready_tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let setup = || -> Result<UdpSocket, TestkitError> {
                enter_ns(&ns_u)?;
                let s = UdpSocket::bind((ip_u.as_str(), udp_port)).map_err(io)?;
                s.set_read_timeout(tick).map_err(io)?;
                Ok(s)
            };
            let public = match setup() {
                Ok(s) => {
                    let _ = ready_u.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_u.send(Err(e));
                    return;
                }
            };
            let mut inner: Vec<(SocketAddr, UdpSocket)> = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop_u.load(Ordering::SeqCst) {
                if let Ok((n, src)) = public.recv_from(&mut buf) {
                    if !inner.iter().any(|(a, _)| *a == src) {
                        let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
                            continue;
                        };
                        if sock.connect(("127.0.0.1", udp_port)).is_err() {
                            continue;
                        }
                        let _ = sock.set_nonblocking(true);
                        inner.push((src, sock));
                    }
                    if let Some((_, sock)) = inner.iter().find(|(a, _)| *a == src) {
                        let _ = sock.send(&buf[..n]);
                    }
                }
                for (client, sock) in &inner {
                    for _ in 0..64 {
                        match sock.recv(&mut buf) {
                            Ok(n) => {
                                let _ = public.send_to(&buf[..n], client);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }));

        let (ns_t, ip_t, stop_t) = (ns.to_string(), public_ip.to_string(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let setup = || -> Result<TcpListener, TestkitError> {
                enter_ns(&ns_t)?;
                let l = TcpListener::bind((ip_t.as_str(), tcp_port)).map_err(io)?;
                l.set_nonblocking(true).map_err(io)?;
                Ok(l)
            };
            let listener = match setup() {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop_t.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", tcp_port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    // Ends when either side closes (the test tears both down).
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        }));
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| TestkitError::NotReady("relay".into()))??;
        }
        Ok(LoopbackRelay { stop, threads })
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
