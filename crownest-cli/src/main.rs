//! `crownest`: run repo-shaped archives in sandboxes, and inspect, verify and export the
//! durable record of each run.
//!
//! Every command opens the durable store under `--home` (default `$CROWNEST_HOME`, else the
//! platform data directory, e.g. `~/.local/share/crownest`) through the engine, which runs
//! recovery first: runs left unfinished by a process that is gone end `failed`
//! (`host_restarted`); runs driven by a live process are never touched.
//!
//! Exit codes: 0 succeeded, 1 failed, 2 usage error or rejected input, 130 canceled. The
//! command reference is `docs/cli.md`.

mod artifacts;
mod cli;
mod doctor;
mod exit;
mod home;
mod inspect;
mod pack;
mod progress;
mod run;
mod upload;
mod verify;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crownest: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Drivers of runs this process created have finished (or were canceled) by now; do
    // not wait for stray blocking tasks (e.g. a progress ticker).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(exit) => exit.into(),
        // `crownest events RUN | head`: the reader left; that is not an error.
        Err(e) if exit::is_broken_pipe(&e) => Exit::Success.into(),
        Err(e) => {
            eprintln!("crownest: {}", exit::describe(&e));
            exit::classify(&e).into()
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    let home = home::resolve(cli.home)?;
    match cli.command {
        Command::Run(args) => run::run(&home, args).await,
        Command::Runs(args) => inspect::runs(&home, args).await,
        Command::Show(args) => inspect::show(&home, args).await,
        Command::Events(args) => inspect::events(&home, args).await,
        Command::Evidence(args) => inspect::evidence(&home, args).await,
        Command::Verify(args) => verify::verify(&home, args).await,
        Command::Artifacts(args) => artifacts::export(&home, args).await,
        Command::Cancel(args) => inspect::cancel(&home, args).await,
        Command::Doctor(args) => doctor::doctor(&home, args).await,
    }
}
