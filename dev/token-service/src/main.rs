//! `mi-token-service`: dev-only lk-jwt-service stand-in. See the library docs and `--help`.
//!
//! Prints `listening on http://ADDR` on stdout once it accepts connections; logs go to
//! stderr (`RUST_LOG`, default `info`). Stops cleanly on SIGTERM or SIGINT.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use mi_token_service::{Cli, Server, Service, ServiceConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter())
        .init();
    let (listen, config) = match cli.into_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("mi-token-service: {e}");
            return ExitCode::from(2);
        }
    };
    // One TLS crypto provider for the process (https homeservers); an earlier install wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mi-token-service: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(listen, config))
}

async fn run(listen: std::net::SocketAddr, config: ServiceConfig) -> ExitCode {
    let service = match Service::new(config) {
        Ok(service) => service,
        Err(e) => {
            eprintln!("mi-token-service: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("mi-token-service: cannot handle SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::bind(listen, service).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mi-token-service: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match server.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("mi-token-service: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening on http://{addr}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        error!("could not write the ready line to stdout");
    }
    server
        .serve(async {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
        })
        .await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// `RUST_LOG` (default `info`), with the HTTP client crates held at `info` whatever it says:
/// their debug/trace output may carry request URLs, and the userinfo URL holds the token.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for quiet in ["reqwest=info", "hyper=info", "hyper_util=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}
