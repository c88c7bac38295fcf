//! `mi-test-sfu`: a dev-only LiveKit-compatible SFU for tests (audio/Opus only, v0 `/rtc`).
//! Binds exactly the addresses given, advertises only `--advertise` addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::{mpsc, oneshot, Notify};

use mi_test_sfu::auth::Auth;
use mi_test_sfu::engine::{Command, Engine};
use mi_test_sfu::media::NetPlan;
use mi_test_sfu::server::{serve, Shared};

/// A LiveKit-compatible test SFU (dev only).
#[derive(Parser, Debug)]
#[command(name = "mi-test-sfu")]
struct Cli {
    /// HTTP + WebSocket signalling address (port 0 = any free port).
    #[arg(long)]
    listen: SocketAddr,
    /// The one UDP socket for all media (port 0 = any free port).
    #[arg(long)]
    udp: SocketAddr,
    /// Address announced as ICE candidate (repeatable; default: the --udp address).
    #[arg(long)]
    advertise: Vec<IpAddr>,
    /// API key tokens must be issued by.
    #[arg(long)]
    key: String,
    /// API secret tokens must be signed with.
    #[arg(long)]
    secret: String,
    /// Rooms must be created with CreateRoom before joining.
    #[arg(long)]
    no_auto_create: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mi_test_sfu=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    for addr in [cli.listen.ip(), cli.udp.ip()] {
        anyhow::ensure!(
            !addr.is_unspecified(),
            "refusing to bind {addr}: give the exact address to serve on"
        );
    }
    for addr in &cli.advertise {
        anyhow::ensure!(
            !addr.is_unspecified(),
            "refusing to advertise {addr}: give the address clients reach the UDP socket at"
        );
    }
    str0m::crypto::from_feature_flags().install_process_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::bind(cli.udp)
        .await
        .with_context(|| format!("binding UDP {}", cli.udp))?;
    let local = udp.local_addr()?;
    let advertise = if cli.advertise.is_empty() {
        vec![local.ip()]
    } else {
        cli.advertise.clone()
    };
    let plan = NetPlan { local, advertise };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding TCP {}", cli.listen))?;
    let http = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = tokio::spawn(Engine::new(udp, plan, !cli.no_auto_create).run(rx));
    let shared = Arc::new(Shared {
        auth: Auth::new(&cli.key, &cli.secret),
        engine: tx.clone(),
        sessions: AtomicUsize::new(0),
        sessions_changed: Notify::new(),
    });
    let server = tokio::spawn(serve(listener, shared.clone()));
    println!("media on udp://{local}");
    println!("listening on http://{http}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: telling every participant SERVER_SHUTDOWN");
    server.abort();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = tx.send(Command::Shutdown(done_tx));
    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    // Wait (bounded) for the sessions to flush their LeaveRequest and close.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while shared.sessions.load(Ordering::SeqCst) > 0 {
            let changed = shared.sessions_changed.notified();
            if shared.sessions.load(Ordering::SeqCst) == 0 {
                break;
            }
            changed.await;
        }
    })
    .await;
    engine.abort();
    Ok(())
}
