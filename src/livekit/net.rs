//! Which local address reaches the SFU, and the UDP sockets of the two peer connections.
//!
//! Owns socket creation only. The local address is learned by connecting an (unsent-to) UDP
//! socket to the SFU host and reading its source address: no interface enumeration.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Host and port of a `ws://`, `wss://`, `http://` or `https://` URL.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, default_port),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The local source address the kernel picks to reach `url`'s host.
pub async fn route_source_ip(url: &str) -> io::Result<IpAddr> {
    let (host, port) = url_host_port(url).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the LiveKit URL has no host (expected ws[s]://host[:port]/...)",
        )
    })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
        match source_ip_for(addr) {
            Ok(ip) => return Ok(ip),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn source_ip_for(dest: SocketAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if dest.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // `connect` on UDP only selects a route; nothing is sent.
    let probe = UdpSocket::bind((any, 0))?;
    probe.connect(dest)?;
    Ok(probe.local_addr()?.ip())
}

/// A non-blocking UDP socket on `ip`, any port, for tokio.
pub fn bind_media_socket(ip: IpAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = UdpSocket::bind((ip, 0))?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(
            url_host_port("wss://sfu.example.org/livekit/sfu"),
            Some(("sfu.example.org".into(), 443))
        );
        assert_eq!(
            url_host_port("ws://127.0.0.1:7880"),
            Some(("127.0.0.1".into(), 7880))
        );
        assert_eq!(
            url_host_port("http://[::1]:7880/x"),
            Some(("::1".into(), 7880))
        );
        assert_eq!(url_host_port("ftp://x"), None);
        assert_eq!(url_host_port("ws://"), None);
    }

    #[tokio::test]
    async fn loopback_url_routes_from_loopback() {
        let ip = route_source_ip("ws://127.0.0.1:7880").await.unwrap();
        assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));
    }
}
