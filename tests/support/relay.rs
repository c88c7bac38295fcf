//! A lossy UDP relay for media tests: clients reach `public` (the address the test SFU
//! advertises), the relay forwards to the SFU from one inner socket per client and drops
//! every n-th RTP packet on the way back (STUN, DTLS and RTCP always pass). The SFU sees each
//! client as a peer-reflexive loopback source.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub struct LossyRelay {
    pub public: SocketAddr,
    /// RTP packets dropped so far.
    pub dropped: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

/// RTP (not RTCP) per RFC 7983 / RFC 5761: first byte 128..=191, payload type byte not 192..=223.
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() > 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1])
}

impl LossyRelay {
    /// Listens on `public`, forwards to `upstream` from sockets on `inner_ip`, drops every
    /// `drop_every`-th RTP packet sent back to each client.
    pub async fn start(
        public: SocketAddr,
        upstream: SocketAddr,
        inner_ip: IpAddr,
        drop_every: u64,
    ) -> Self {
        let outer = Arc::new(UdpSocket::bind(public).await.expect("relay bind"));
        let dropped = Arc::new(AtomicU64::new(0));
        let tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, t) = (dropped.clone(), tasks.clone());
        let main = tokio::spawn(async move {
            let mut inner: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            while let Ok((n, client)) = outer.recv_from(&mut buf).await {
                let sock = match inner.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(UdpSocket::bind((inner_ip, 0)).await.expect("inner"));
                        let (back, out, dropped) = (s.clone(), outer.clone(), d.clone());
                        t.lock().unwrap().push(tokio::spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            let mut rtp = 0u64;
                            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                                if is_rtp(&buf[..n]) {
                                    rtp += 1;
                                    if rtp % drop_every == 0 {
                                        dropped.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                }
                                let _ = out.send_to(&buf[..n], client).await;
                            }
                        }));
                        inner.insert(client, s.clone());
                        s
                    }
                };
                let _ = sock.send_to(&buf[..n], upstream).await;
            }
        });
        tasks.lock().unwrap().push(main);
        Self {
            public,
            dropped,
            tasks,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}
