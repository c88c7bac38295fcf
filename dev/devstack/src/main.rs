//! `mi-devstack`: see the crate documentation (`src/lib.rs`) for the command line and the stack
//! file it writes.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = mi_devstack::run::Cli::parse();
    // One thread: children are spawned from this (main) thread, which their parent-death signal
    // is tied to (see `process`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mi-devstack: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mi_devstack::run::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mi-devstack: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
