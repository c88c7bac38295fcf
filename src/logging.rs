//! Logging set-up: journald when running under systemd, stderr otherwise.
//!
//! The level comes from `RUST_LOG` if set, else from `[log] level`. Secrets never reach here:
//! they are held in `crate::secret::Secret`, which prints `[redacted]`.

use std::os::unix::fs::MetadataExt;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM=<dev>:<inode>`).
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global subscriber. Call once, early.
pub fn init(config_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd (INVOCATION_ID) the journal socket is used even when stdout/stderr are
    // redirected elsewhere; an interactive run keeps logging to the terminal.
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let journald = (stderr_is_journal()
        || under_systemd && std::path::Path::new(JOURNAL_SOCKET).exists())
    .then(|| tracing_journald::layer().ok())
    .flatten()
    .map(|l| l.with_syslog_identifier("matrix-intercom".into()));
    let stderr = journald.is_none().then(|| {
        // Colours only for a terminal: a log file or pipe gets plain text.
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let _ = tracing_subscriber::registry()
        .with(journald.map(|l| l.with_filter(filter.clone())))
        .with(stderr.map(|l| l.with_filter(filter)))
        .try_init();
}
