//! The HTTP/1.1 listener around [`Service`].
//!
//! Owns: the loopback TCP listener, reading request bodies (at most [`MAX_BODY`]), and a
//! graceful stop (no new connections; open ones finish, bounded by [`DRAIN_TIMEOUT`]).
//! Must not touch: what the endpoints answer (see `service`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::error::MatrixError;
use crate::service::{Reply, Service};

/// Largest request body read; bigger ones get 413 `M_TOO_LARGE`.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a stop waits for open connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound, not yet serving, token service.
pub struct Server {
    listener: TcpListener,
    service: Arc<Service>,
}

impl Server {
    /// Binds `addr`, which must be a loopback or a private IPv4 address (the command line
    /// allows the latter only with `--allow-private-listen`).
    pub async fn bind(addr: SocketAddr, service: Service) -> io::Result<Self> {
        let private = matches!(addr.ip(), std::net::IpAddr::V4(ip) if ip.is_private());
        if !addr.ip().is_loopback() && !private {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is neither a loopback nor a private address"),
            ));
        }
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            service: Arc::new(service),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains open connections.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = Arc::clone(&self.service);
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| respond(Arc::clone(&service), req)),
                );
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!("connection ended with an error: {e}");
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
}

async fn respond(
    service: Arc<Service>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let reply = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => {
            service
                .handle(&parts.method, parts.uri.path(), &body.to_bytes())
                .await
        }
        Err(e) => {
            let error = if e.is::<http_body_util::LengthLimitError>() {
                MatrixError::too_large(MAX_BODY)
            } else {
                MatrixError::not_json()
            };
            Reply {
                status: error.status,
                headers: vec![("content-type", "application/json")],
                body: error.body(),
            }
        }
    };
    let mut response = Response::builder().status(reply.status);
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|_| {
            let mut fallback = Response::new(Full::new(Bytes::new()));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        }))
}
