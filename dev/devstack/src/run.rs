//! The `mi-devstack` command: command line, start-up order, the stack file, and shutdown.
//! Owns the orchestration only; each outside system has its own module.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use matrix_intercom::secret::Secret;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::helpers::{self, HelperSettings, READY_MARKER};
use crate::info::{LiveKit, Pids, StackInfo, SCHEMA_VERSION};
use crate::matrix::Homeserver;
use crate::ports::{check_free, PortUse};
use crate::process::{self, ExitEvent, Managed, Output};
use crate::synapse::{self, SynapseSettings};
use crate::{provision, random};

/// Matrix server name of the dev homeserver.
pub const SERVER_NAME: &str = "localhost";
const SYNAPSE_TIMEOUT: Duration = Duration::from_secs(90);
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Local dev stack for matrix-intercom: Synapse (MatrixRTC enabled), token service, test SFU,
/// users and a door room. Writes everything to one JSON file and runs until SIGTERM/SIGINT.
#[derive(Debug, clap::Parser)]
#[command(name = "mi-devstack", version)]
pub struct Cli {
    /// Working directory for Synapse data, config and logs (created; reused if it holds an
    /// earlier run's database).
    #[arg(long)]
    pub dir: PathBuf,
    /// Python of a venv with matrix-synapse [default: env MI_PYTHON].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Synapse client/federation port (127.0.0.1, and --http-bind).
    #[arg(long, default_value_t = 8008)]
    pub synapse_port: u16,
    /// Token service port (--http-bind).
    #[arg(long, default_value_t = 8090)]
    pub token_port: u16,
    /// Address Synapse (in addition to 127.0.0.1) and the token service listen on, and the one
    /// their URLs in the stack file and Synapse's MatrixRTC transport use (e.g. a test
    /// namespace's veth address, for clients outside the namespace's loopback).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub http_bind: IpAddr,
    /// SFU signalling/admin TCP port.
    #[arg(long, default_value_t = 7880)]
    pub sfu_port: u16,
    /// SFU media UDP port.
    #[arg(long, default_value_t = 7882)]
    pub sfu_udp_port: u16,
    /// Address the SFU binds to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub sfu_bind: IpAddr,
    /// Address the SFU advertises to clients [default: --sfu-bind].
    #[arg(long)]
    pub sfu_advertise: Option<IpAddr>,
    /// mi-token-service binary [default: next to this executable].
    #[arg(long)]
    pub token_service: Option<PathBuf>,
    /// mi-test-sfu binary [default: next to this executable].
    #[arg(long)]
    pub sfu: Option<PathBuf>,
    /// Where to write the stack JSON [default: DIR/stack.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also create the encrypted room `#door-encrypted` (`encrypted_room_id`).
    #[arg(long)]
    pub encrypted_room: bool,
    /// Stop everything when stdin reaches end of file (for a parent process holding a pipe).
    #[arg(long)]
    pub stop_on_stdin_eof: bool,
    /// Log every HTTP request in synapse.log (request paths carry delay ids: off by default).
    #[arg(long)]
    pub synapse_access_log: bool,
}

/// Children started so far; stopped on drop, so every error path tears the stack down.
struct Children(Vec<Managed>);

impl Drop for Children {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            eprintln!("mi-devstack: stopping {} process(es)", self.0.len());
            process::stop_all(&self.0, STOP_GRACE);
        }
    }
}

/// Removes the stack file on drop, so nobody reads a stale one.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn http_url(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// Runs the stack until a stop signal; returns an error if start-up failed or a child died.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stops = StopRequests::new(cli.stop_on_stdin_eof)?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ExitEvent>();
    let mut children = Children(Vec::new());
    let (info, out) = tokio::select! {
        started = start(&cli, &mut children, exit_tx) => started?,
        why = stops.next() => bail!("{why} during start-up"),
    };
    let _remove = RemoveOnDrop(Some(out.clone()));
    info.write(&out)?;
    println!("stack file: {}", out.display());
    tokio::select! {
        why = stops.next() => {
            eprintln!("mi-devstack: {why}, stopping");
            Ok(())
        }
        Some((name, status)) = exit_rx.recv() => {
            bail!("{name} exited unexpectedly ({}); stopping the stack", process::describe(status))
        }
    }
}

/// Starts everything; returns the stack description and where to write it.
async fn start(
    cli: &Cli,
    children: &mut Children,
    exit_tx: mpsc::UnboundedSender<ExitEvent>,
) -> anyhow::Result<(StackInfo, PathBuf)> {
    let python = cli
        .python
        .clone()
        .or_else(|| std::env::var_os("MI_PYTHON").map(PathBuf::from))
        .context("no Python given: pass --python PATH or set MI_PYTHON to the python of a venv with matrix-synapse (scripts/setup.sh creates .cache/venv)")?;
    if !python.exists() {
        bail!("Python {} does not exist; pass --python or set MI_PYTHON to the python of a venv with matrix-synapse", python.display());
    }
    if cli.http_bind.is_unspecified() {
        bail!("--http-bind {} is not an address clients can use; give one address of this machine (e.g. 127.0.0.1)", cli.http_bind);
    }
    let advertise = cli.sfu_advertise.unwrap_or(cli.sfu_bind);
    if advertise.is_unspecified() {
        bail!("the SFU would advertise {advertise}, which clients cannot reach; give --sfu-advertise IP (or bind to a specific address with --sfu-bind)");
    }
    let sfu_admin_ip = if cli.sfu_bind.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        cli.sfu_bind
    };
    let token_bin = helpers::binary(cli.token_service.as_deref(), "mi-token-service")?;
    let sfu_bin = helpers::binary(cli.sfu.as_deref(), "mi-test-sfu")?;
    for (bin, name, flag) in [
        (&token_bin, "mi-token-service", "--token-service"),
        (&sfu_bin, "mi-test-sfu", "--sfu"),
    ] {
        if !bin.exists() {
            eprintln!("mi-devstack: WARNING: {name} not found at {}; NOT STARTING IT (build it with `cargo build -p {name}` or pass {flag})", bin.display());
        }
    }
    let start_token = token_bin.exists();
    let start_sfu = sfu_bin.exists();

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    check_free(&port_uses(cli, start_token, start_sfu))?;

    std::fs::create_dir_all(&cli.dir)
        .with_context(|| format!("cannot create --dir {}", cli.dir.display()))?;
    let dir = std::fs::canonicalize(&cli.dir)
        .with_context(|| format!("cannot resolve --dir {}", cli.dir.display()))?;
    let out = cli.out.clone().unwrap_or_else(|| default_out(&dir));
    let _ = std::fs::remove_file(&out);
    if dir.join(synapse::DATABASE_FILE).exists() && !provision::has_credentials(&dir) {
        bail!("{} holds a Synapse database but no {}: it was not made by mi-devstack or is from a failed run; delete it or pick another --dir", dir.display(), provision::CREDENTIALS_FILE);
    }

    let homeserver_url = http_url(cli.http_bind, cli.synapse_port);
    // The token service speaks plain http to loopback only: it reaches Synapse there.
    let homeserver_loopback_url = http_url(loopback, cli.synapse_port);
    let token_service_url = http_url(cli.http_bind, cli.token_port);
    let sfu_admin_url = http_url(sfu_admin_ip, cli.sfu_port);
    let livekit_url = format!("ws://{}", SocketAddr::new(advertise, cli.sfu_port));
    let shared_secret = Secret::new(random::alphanumeric(32)?);
    let livekit_key = format!("devkey{}", random::alphanumeric(10)?);
    let livekit_secret = Secret::new(random::alphanumeric(48)?);
    synapse::write_files(&SynapseSettings {
        dir: &dir,
        server_name: SERVER_NAME,
        port: cli.synapse_port,
        bind: cli.http_bind,
        token_service_url: &token_service_url,
        registration_shared_secret: &shared_secret,
        access_log: cli.synapse_access_log,
    })?;

    let started_at = std::time::Instant::now();
    let synapse_child = process::spawn(
        "synapse",
        synapse::command(&python, &dir),
        Output::File(&dir.join(synapse::OUTPUT_FILE)),
        exit_tx.clone(),
    )
    .with_context(|| format!("cannot run {}", python.display()))?;
    let synapse_pid = synapse_child.child.pid;
    children.0.push(synapse_child.child);

    let helper_settings = HelperSettings {
        sfu_listen: SocketAddr::new(cli.sfu_bind, cli.sfu_port),
        sfu_udp: SocketAddr::new(cli.sfu_bind, cli.sfu_udp_port),
        sfu_advertise: advertise,
        token_listen: SocketAddr::new(cli.http_bind, cli.token_port),
        livekit_url: &livekit_url,
        livekit_key: &livekit_key,
        livekit_secret: &livekit_secret,
        server_name: SERVER_NAME,
        homeserver_url: &homeserver_loopback_url,
        sfu_admin_url: &sfu_admin_url,
    };
    let mut waits: Vec<(&'static str, oneshot::Receiver<String>)> = Vec::new();
    let mut pids = [None, None];
    for (i, (run, name, bin, cmd)) in [
        (
            start_sfu,
            "sfu",
            &sfu_bin,
            helpers::sfu_command(&sfu_bin, &helper_settings),
        ),
        (
            start_token,
            "token-service",
            &token_bin,
            helpers::token_service_command(&token_bin, &helper_settings),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        if run {
            let output = Output::Forward {
                ready_marker: READY_MARKER,
            };
            let started = process::spawn(name, cmd, output, exit_tx.clone())
                .with_context(|| format!("cannot run {}", bin.display()))?;
            pids[i] = Some(started.child.pid);
            waits.extend(started.ready.map(|r| (name, r)));
            children.0.push(started.child);
        }
    }
    let [sfu_pid, token_pid] = pids;

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let synapse_status = || children.0[0].exit_status().map(process::describe);
    let took = synapse::wait_ready(
        &http,
        &homeserver_url,
        &dir,
        SYNAPSE_TIMEOUT,
        synapse_status,
    )
    .await?;
    println!("synapse ready in {:.1} s", took.as_secs_f64());
    for (name, ready) in waits {
        match tokio::time::timeout(HELPER_TIMEOUT, ready).await {
            Ok(Ok(_)) => eprintln!("mi-devstack: {name} ready after {:.1} s", started_at.elapsed().as_secs_f64()),
            Ok(Err(_)) => bail!("{name} closed its output before printing '{READY_MARKER}' (it probably exited; see its lines above)"),
            Err(_) => bail!("{name} did not print '{READY_MARKER}' within {} s", HELPER_TIMEOUT.as_secs()),
        }
    }

    let hs = Homeserver::new(http, &homeserver_url)?;
    let made =
        provision::provision(&hs, &dir, SERVER_NAME, &shared_secret, cli.encrypted_room).await?;
    let (encrypted_room_id, encrypted_room_alias) = made.encrypted_room.unzip();
    let info = StackInfo {
        version: SCHEMA_VERSION,
        dir: dir.clone(),
        server_name: SERVER_NAME.into(),
        homeserver_url,
        registration_shared_secret: shared_secret,
        synapse_log: dir.join(synapse::LOG_FILE),
        users: made.users,
        room_id: made.room_id,
        room_alias: made.room_alias,
        encrypted_room_id,
        encrypted_room_alias,
        livekit: LiveKit {
            url: livekit_url,
            key: livekit_key,
            secret: livekit_secret,
        },
        token_service_url,
        sfu_admin_url,
        pids: Pids {
            devstack: std::process::id(),
            synapse: synapse_pid,
            token_service: token_pid,
            sfu: sfu_pid,
        },
    };
    eprintln!(
        "mi-devstack: stack up in {:.1} s: {} room {} ({}){}",
        started_at.elapsed().as_secs_f64(),
        info.homeserver_url,
        info.room_alias,
        info.room_id,
        if start_token && start_sfu {
            ""
        } else {
            " -- WITHOUT token service and/or SFU, see warnings above"
        }
    );
    Ok((info, out))
}

/// The ports the stack is about to use (the helpers' only if they are started).
fn port_uses(cli: &Cli, start_token: bool, start_sfu: bool) -> Vec<PortUse> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut ports = vec![PortUse {
        addr: SocketAddr::new(loopback, cli.synapse_port),
        udp: false,
        what: "Synapse",
        flag: "--synapse-port",
    }];
    if !cli.http_bind.is_loopback() {
        ports.push(PortUse {
            addr: SocketAddr::new(cli.http_bind, cli.synapse_port),
            udp: false,
            what: "Synapse",
            flag: "--synapse-port",
        });
    }
    if start_token {
        ports.push(PortUse {
            addr: SocketAddr::new(cli.http_bind, cli.token_port),
            udp: false,
            what: "the token service",
            flag: "--token-port",
        });
    }
    if start_sfu {
        ports.push(PortUse {
            addr: SocketAddr::new(cli.sfu_bind, cli.sfu_port),
            udp: false,
            what: "the SFU",
            flag: "--sfu-port",
        });
        ports.push(PortUse {
            addr: SocketAddr::new(cli.sfu_bind, cli.sfu_udp_port),
            udp: true,
            what: "the SFU media",
            flag: "--sfu-udp-port",
        });
    }
    ports
}

/// SIGTERM, SIGINT and (optionally) end of stdin.
struct StopRequests {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    eof: Option<oneshot::Receiver<()>>,
}

impl StopRequests {
    fn new(stdin_eof: bool) -> anyhow::Result<Self> {
        let term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut eof = None;
        if stdin_eof {
            let (tx, rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("stdin-eof".into())
                .spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                    let _ = tx.send(());
                })
                .context("cannot watch stdin")?;
            eof = Some(rx);
        }
        Ok(Self { term, int, eof })
    }

    /// Resolves with the reason once a stop is requested.
    async fn next(&mut self) -> &'static str {
        let Self { term, int, eof } = self;
        let eof = async {
            match eof.as_mut() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = eof => "stdin closed",
        }
    }
}

/// The stack file of a working directory when `--out` is not given.
pub fn default_out(dir: &Path) -> PathBuf {
    dir.join("stack.json")
}
