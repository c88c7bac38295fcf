//! Port pre-flight: refuse to start when a port the stack needs is taken, naming the port and
//! the flag that changes it. Owns only these checks (bind, then release at once).

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// One port the stack is about to use.
#[derive(Debug, Clone, Copy)]
pub struct PortUse {
    pub addr: SocketAddr,
    pub udp: bool,
    /// Who needs it, e.g. "Synapse".
    pub what: &'static str,
    /// The flag that changes it, e.g. "--synapse-port".
    pub flag: &'static str,
}

/// A port cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{proto} port {port} on {ip} (for {what}) is already in use; stop whatever holds it or pick another port with {flag}")]
    InUse {
        proto: &'static str,
        port: u16,
        ip: std::net::IpAddr,
        what: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("cannot bind {proto} {addr} (for {what}); is that an address of this machine? Change the address, or the port with {flag}")]
    Unusable {
        proto: &'static str,
        addr: SocketAddr,
        what: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("{flag_a} and {flag_b} both ask for port {port}; give them different ports")]
    Clash {
        port: u16,
        flag_a: &'static str,
        flag_b: &'static str,
    },
}

/// Checks that the ports of different flags are pairwise distinct and each can be bound right now.
pub fn check_free(uses: &[PortUse]) -> Result<(), PortError> {
    for (i, a) in uses.iter().enumerate() {
        for b in &uses[i + 1..] {
            // One service on two addresses (same flag) uses its port twice.
            if a.udp == b.udp && a.addr.port() == b.addr.port() && a.flag != b.flag {
                return Err(PortError::Clash {
                    port: a.addr.port(),
                    flag_a: a.flag,
                    flag_b: b.flag,
                });
            }
        }
    }
    for u in uses {
        let result = if u.udp {
            UdpSocket::bind(u.addr).map(drop)
        } else {
            TcpListener::bind(u.addr).map(drop)
        };
        let proto = if u.udp { "UDP" } else { "TCP" };
        result.map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => PortError::InUse {
                proto,
                port: u.addr.port(),
                ip: u.addr.ip(),
                what: u.what,
                flag: u.flag,
                source,
            },
            _ => PortError::Unusable {
                proto,
                addr: u.addr,
                what: u.what,
                flag: u.flag,
                source,
            },
        })?;
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for tests and [`crate::DevStack`]).
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_refused_with_port_and_flag_named() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let err = check_free(&[PortUse {
            addr,
            udp: false,
            what: "Synapse",
            flag: "--synapse-port",
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains(&addr.port().to_string()), "{err}");
        assert!(err.contains("--synapse-port"), "{err}");
        drop(holder);
        check_free(&[PortUse {
            addr,
            udp: false,
            what: "Synapse",
            flag: "--synapse-port",
        }])
        .unwrap();
    }

    #[test]
    fn the_same_port_for_two_services_is_refused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let uses = [
            PortUse {
                addr,
                udp: false,
                what: "Synapse",
                flag: "--synapse-port",
            },
            PortUse {
                addr,
                udp: false,
                what: "token service",
                flag: "--token-port",
            },
        ];
        let err = check_free(&uses).unwrap_err().to_string();
        assert!(err.contains("--synapse-port and --token-port"), "{err}");
    }
}
