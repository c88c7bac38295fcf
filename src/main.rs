//! The `matrix-intercom` command: daemon, config tools, control client, login/logout.

use anyhow::Context;
use clap::{Parser, Subcommand};
use matrix_intercom::config::{Config, DEFAULT_CONFIG_PATH, EXAMPLE_CONFIG};
use matrix_intercom::control::{self, Command};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "matrix-intercom",
    version,
    about = "Matrix (Element Call) door intercom for single-board computers"
)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        /// The provisioning file the `provision` step imports; when it is present but broken,
        /// the daemon signals it (LED, `ctl status`, journal) while running on the current config.
        #[arg(long, default_value = matrix_intercom::provision::DEFAULT_BOOT_FILE)]
        boot_file: PathBuf,
    },
    /// Check the config file offline; exit code 2 when it is invalid.
    CheckConfig,
    /// Print the fully commented default config.
    PrintDefaultConfig,
    /// Log in once with the device account's password (read from stdin, or [matrix] password)
    /// and store the session in the state directory.
    Login {
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke the stored session and delete it.
    Logout,
    /// Import the provisioning file from the boot partition into the config (run as root
    /// before the service starts; a broken file leaves the current config in use).
    Provision {
        #[arg(long, default_value = matrix_intercom::provision::DEFAULT_BOOT_FILE)]
        boot_file: PathBuf,
    },
    /// List ALSA devices usable for [audio] capture/playback (like `aplay -L`).
    ListAudio,
    /// Talk to the running daemon over its control socket.
    Ctl {
        #[command(subcommand)]
        action: CtlCmd,
        /// Control socket (default: [control] socket from the config, else the built-in default).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum CtlCmd {
    /// Act exactly like a button press.
    Press,
    /// Leave the call, if in one.
    Leave,
    /// Print the daemon's status as one JSON object.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::PrintDefaultConfig => {
            print!("{EXAMPLE_CONFIG}");
            ExitCode::SUCCESS
        }
        Cmd::CheckConfig => check_config(&cli.config),
        Cmd::Ctl { action, socket } => ctl(&cli.config, socket, action),
        Cmd::ListAudio => list_audio(),
        Cmd::Provision { boot_file } => provision(&boot_file, &cli.config),
        Cmd::Login { password_stdin } => report(account(&cli.config, Some(password_stdin))),
        Cmd::Logout => report(account(&cli.config, None)),
        Cmd::Run { boot_file } => match run(&cli.config, boot_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("matrix-intercom: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matrix-intercom: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Imports the boot partition's provisioning file; never fails the service start: on a broken
/// file the previous config stays in use and the error goes to the journal.
fn provision(boot_file: &std::path::Path, config: &std::path::Path) -> ExitCode {
    use matrix_intercom::provision::{import, scrub_password, Outcome};
    match import(boot_file, config) {
        Ok(Outcome::NoFile) => {}
        Ok(Outcome::Unchanged) => println!("{}: unchanged", boot_file.display()),
        Ok(Outcome::Imported { .. }) => println!(
            "{}: imported into {}",
            boot_file.display(),
            config.display()
        ),
        Err(e) => eprintln!("matrix-intercom: {e}"),
    }
    // Once a session is stored, no copy of the password is needed any more.
    if let Ok(loaded) = Config::load(config) {
        let session = loaded
            .config
            .matrix
            .state_dir
            .join(matrix_intercom::config::SESSION_FILE);
        if session.exists() {
            for file in [boot_file, config] {
                match scrub_password(file) {
                    Ok(true) => println!("{}: password removed", file.display()),
                    Ok(false) => {}
                    Err(e) if file == boot_file && !file.exists() => drop(e),
                    Err(e) => eprintln!("matrix-intercom: {e}"),
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn list_audio() -> ExitCode {
    match matrix_intercom::audio::list_devices() {
        Ok(devices) => {
            for d in devices {
                let dir = match d.direction {
                    Some(dir) => format!(" ({dir:?} only)"),
                    None => String::new(),
                };
                println!(
                    "{}{dir}\n    {}",
                    d.name,
                    d.description.replace('\n', "\n    ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("matrix-intercom: cannot list ALSA devices: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `login` (with `Some(read_stdin)`) or `logout` (`None`).
fn account(path: &std::path::Path, login: Option<bool>) -> anyhow::Result<()> {
    let loaded = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    matrix_intercom::logging::init(&loaded.config.log.level);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = loaded.config;
    match login {
        Some(from_stdin) => {
            let password = if from_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                cfg.matrix.password.clone().context(
                    "no password: pass --password-stdin or set [matrix] password for the first login",
                )?
            };
            let session =
                rt.block_on(matrix_intercom::matrix::login_interactive(&cfg, &password))?;
            println!(
                "logged in as {} (device {}); session stored in {}",
                session.user_id,
                session.device_id,
                cfg.matrix.state_dir.display()
            );
            if cfg.matrix.password.is_some() {
                println!("now remove [matrix] password from {}", path.display());
            }
        }
        None => {
            rt.block_on(matrix_intercom::matrix::logout(&cfg))?;
            println!("logged out; session deleted");
        }
    }
    Ok(())
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: {}", path.display(), loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in e.problems() {
                eprintln!("error: {p}");
            }
            ExitCode::from(2)
        }
    }
}

fn ctl(config: &std::path::Path, socket: Option<PathBuf>, action: CtlCmd) -> ExitCode {
    let socket = socket.unwrap_or_else(|| {
        Config::load(config)
            .map(|c| c.config.control.socket)
            .unwrap_or_else(|_| matrix_intercom::config::ControlConfig::default().socket)
    });
    let cmd = match action {
        CtlCmd::Press => Command::Press,
        CtlCmd::Leave => Command::Leave,
        CtlCmd::Status => Command::Status,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("matrix-intercom: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(control::send(&socket, cmd)) {
        Ok(reply) => {
            if let Some(status) = reply.status {
                println!("{}", serde_json::to_string(&status).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("matrix-intercom: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, boot_file: PathBuf) -> anyhow::Result<()> {
    let loaded = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    matrix_intercom::logging::init(&loaded.config.log.level);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(matrix_intercom::daemon::run(loaded, boot_file))
}
