//! `crownest`: run repo-shaped archives in sandboxes, and inspect, verify and export the
//! durable record of each run.
//!
//! Every command opens the durable store under `--home` (default `$CROWNEST_HOME`, else the
//! platform data directory, e.g. `~/.local/share/crownest`) through the engine, which runs
//! recovery first: runs left unfinished by a process that is gone end `failed`
//! (`host_restarted`); runs driven by a live process are never touched.
//!
//! With `--server URL` (or `$CROWNEST_SERVER`) and a token (`$CROWNEST_TOKEN`, or
//! `--token-file FILE`; `--token T` works but puts it on argv), every command goes to that
//! server through the typed HTTP client instead; `crownest serve` is such a server over
//! the local store, with a backend policy (`--backends`) and tokens with scopes
//! (`--tokens`, `crownest token add`).
//!
//! `run --env K=V` passes a plain setting (recorded with its value, never masked);
//! `run --secret K` (from this environment) and `--secret-file K=PATH` pass secrets: masked
//! as `***` in output, which guards against accidental echo only (a reversed or base64
//! value passes), never stored, recorded by name. A secret value is never read from argv.
//!
//! Exit codes: 0 succeeded, 1 failed, 2 usage error or rejected input, 130 canceled. The
//! command reference is `docs/cli.md`.

mod artifacts;
mod cli;
mod connection;
mod detach;
mod docs;
mod doctor;
mod exit;
mod export;
mod gc;
mod home;
mod hostkey;
mod inspect;
mod logging;
mod pack;
mod policy;
mod progress;
mod run;
mod serve;
mod setup;
mod templates;
mod term;
mod tls;
mod tokens;
mod upload;
mod verify;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::connection::Target;
use crate::exit::Exit;

/// A short command (`run`, `list`, ...) starts a dozen threads (the runtime's workers, the
/// blocking pool, the SQLite writer and reader, the sandbox's pumps) that mostly wait; glibc
/// gives each its own malloc arena, whose first allocations fault in fresh pages. Two
/// arenas: ~75 fewer page faults and 0.3–0.7 ms less per tiny run (`docs/benchmarks.md`,
/// "Fifth pass"). `serve`, whose threads allocate at once under load, keeps glibc's default.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; this runs before the process
    // starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Archives up to this size make a short `run` (see [`runtime_for`]).
const SMALL_ARCHIVE: u64 = 1024 * 1024;

/// The async runtime of a command. A local `run` on the process backend of an archive file
/// of at most [`SMALL_ARCHIVE`] gets a current-thread runtime: its async work (the driver,
/// the sandbox's output pumps, the printing) is light next to the store's writer thread,
/// which does a run's heavy lifting (events encoded, hashed and written) on a thread of its
/// own, and blocking work still goes to the blocking pool, while two workers cost a tiny run
/// their creation and a wake-up of another thread at every hand-off (~0.3-0.7 ms of ~12;
/// a run printing 65 MB was not slower: `docs/benchmarks.md`, "Fifteenth pass"). A larger
/// archive (or a directory, packed by the command) keeps two workers: reading, hashing and
/// storing a 93 MB archive overlap on them (1.02 s against 1.15 s on one thread). So does
/// every other command, `run` with `--server` (an upload streamed over HTTP), and `run` on
/// the wasm backend (its guest runs as a task of the runtime, and would share the one
/// thread with everything else) or the Docker backend.
fn runtime_for(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let short_run = match &cli.command {
        Command::Run(args) => {
            cli.server.is_none()
                && args.backend.as_deref().is_none_or(|b| b == "process")
                && std::fs::metadata(&args.source)
                    .is_ok_and(|m| m.is_file() && m.len() <= SMALL_ARCHIVE)
        }
        _ => false,
    };
    if short_run {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = parse();
    term::init(cli.quiet, cli.color);
    logging::init(
        cli.log_format,
        matches!(cli.command, Command::Serve(_)),
        cli.verbose,
        term::color(),
    );
    if !matches!(cli.command, Command::Serve(_)) {
        few_malloc_arenas();
    }
    let runtime = match runtime_for(&cli) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crownest: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let run = matches!(cli.command, Command::Run(_));
    let result = runtime.block_on(dispatch(cli));
    if run {
        // `run` has waited for everything of its own by now: the run's terminal commit,
        // the store's close, recovery (bounded), and the backends' `shutdown`, which waits
        // for the sandbox's removal and every deletion of a work root still in flight
        // (`WorkRoot::removals_settled`). What is left are idle threads, which the exit
        // ends without being woken one by one.
        runtime.shutdown_background();
    } else {
        // Drivers of runs this process created have finished (or were canceled) by now;
        // do not wait for stray blocking tasks (e.g. a progress ticker).
        runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    }
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

/// Parses argv with clap's colours following `--color` / `NO_COLOR` (clap reads neither).
fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let choice = args
        .iter()
        .filter_map(|a| a.to_str())
        .find_map(|a| a.strip_prefix("--color="))
        .or_else(|| {
            args.iter()
                .position(|a| a == "--color")
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.to_str())
        });
    let choice = match choice {
        Some("always") => cli::ColorChoice::Always,
        Some("never") => cli::ColorChoice::Never,
        _ => cli::ColorChoice::Auto,
    };
    let clap_color = if term::colored(choice) {
        clap::ColorChoice::Always
    } else {
        clap::ColorChoice::Never
    };
    let matches = Cli::command().color(clap_color).get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

async fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    let token = tokens::resolve(cli.token, cli.token_file.as_deref())?;
    home::choose_store(cli.store, cli.blobs)?;
    let target = Target::new(cli.home, cli.server, token.clone(), cli.ca_cert.as_deref())?;
    match cli.command {
        Command::Run(args) => run::run(&target, *args).await,
        Command::Runs(args) => inspect::runs(&target, args).await,
        Command::Show(args) => inspect::show(&target, args).await,
        Command::Events(args) => inspect::events(&target, args).await,
        Command::Logs(args) => inspect::logs(&target, args).await,
        Command::Evidence(args) => inspect::evidence(&target, args).await,
        Command::Verify(args) => verify::verify(&target, args).await,
        Command::Artifacts(args) => artifacts::export(&target, args).await,
        Command::Export(args) => export::export(&target, args).await,
        Command::HostKey(args) => hostkey::print(&target, args).await,
        Command::Cancel(args) => inspect::cancel(&target, args).await,
        Command::Delete(args) => inspect::delete(&target, args).await,
        Command::Doctor(args) => doctor::doctor(&target, args).await,
        Command::Templates(args) => templates::list(&target, args).await,
        Command::Setup(args) => setup::setup(args).await,
        Command::Completions(args) => docs::completions(&args),
        Command::Man(args) => docs::man(&args),
        Command::Serve(args) => {
            if target.server().is_some() {
                return Err(exit::usage(
                    "serve runs a server over the local store; it does not take --server",
                ));
            }
            serve::serve(&target.home()?, args, token).await
        }
        Command::Token(command) => {
            if target.server().is_some() {
                return Err(exit::usage(
                    "token edits a tokens file here; it does not take --server",
                ));
            }
            tokens::token(&target.home()?, command)
        }
        Command::Gc(args) => {
            if target.server().is_some() {
                return Err(exit::usage(
                    "gc works on the local store in --home; it does not take --server",
                ));
            }
            gc::gc(&target.home()?, args).await
        }
    }
}
