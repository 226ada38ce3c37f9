//! `crownest run`: pack or take the source, create the run, upload, start, stream, summarize.
//!
//! Output: the command's stdout on stdout and its stderr on stderr, live, in event order;
//! progress bars for packing / uploading / verifying / extracting on stderr when it is a
//! terminal; then a summary on stderr. With `--json`, every event is one JSON line on stdout
//! instead (ending with the `terminal` event), and only problems go to stderr.
//!
//! With `--server`, the same steps go through the HTTP client: the archive is uploaded (attached
//! by digest when the server has it, direct, or staged), events come over SSE (reconnecting
//! with `Last-Event-ID`), Ctrl-C cancels through the API, and the exit codes are the same.
//!
//! Ctrl-C (or SIGTERM) cancels the run: the engine runs the kill ladder, the run ends
//! `canceled`, and `run` exits 130. A second Ctrl-C exits at once; the run is then left to
//! recovery (it ends `failed`/`host_restarted` when the store is next opened).
//!
//! Files: this one (the steps and the event loop), `spec.rs` (the spec from the flags),
//! `render.rs` (what is printed), `outcome.rs` (the exit code), `flags.rs` (the global
//! flags a printed hint repeats).

mod flags;
mod outcome;
mod render;
mod spec;

pub(crate) use flags::global_flags;
pub(crate) use outcome::exit_for;

use outcome::{exit_for_outcome, propagated_exit};
use render::{Renderer, summary};
use spec::spec;

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use crownest_core::{Error, FailureKind, RunId, RunSpec, RunStatus};
use futures::StreamExt as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::connection::{Connection, Target};
use crate::exit::{Exit, is_rejection};
use crate::home;
use crate::progress::Progress;
use crate::upload;

/// SIGINT and SIGTERM, as one stream of "please stop".
pub(crate) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// `crownest run`.
pub(crate) async fn run(target: &Target, args: RunArgs) -> anyhow::Result<Exit> {
    let spec = spec(&args)?;
    if args.detach && target.server().is_none() {
        return crate::detach::detach(&target.home()?).await;
    }
    let declared = upload::declared(args.sha256.as_deref(), args.size_bytes)?;
    let mut interrupts = Interrupts::new()?;
    let tty = !args.json && std::io::stderr().is_terminal();
    let mut progress = Progress::new(tty && !crate::term::quiet());
    let ignore = if args.no_ignore {
        crate::pack::Ignore::Nothing
    } else {
        crate::pack::Ignore::Files
    };
    let remote = target.server().is_some();
    let source = upload::prepare(&args.source, declared, ignore, remote, &mut progress)?;

    if let Some(client) = target.server() {
        let conn = Connection::Remote(client.clone());
        return drive(&conn, spec, &args, source, progress, &mut interrupts).await;
    }
    let opened = home::open_for_run(&target.home()?, &spec).await?;
    let conn = Connection::Local(opened.engine);
    let exit = drive(&conn, spec, &args, source, progress, &mut interrupts).await;
    // Let recovery (running beside the run) finish, briefly: it is idempotent, and the next
    // command redoes whatever it did not get to. Meanwhile the backends finish what they do
    // in the background (the Docker backend removes the run's stopped container after its
    // terminal commit, see `home::docker_backend`).
    let recovered = tokio::time::timeout(std::time::Duration::from_secs(5), opened.recovery);
    // The store closes (its close-time checkpoint, when the WAL is long) once recovery, its
    // last writer, is done, while the backends finish: they never write to the store.
    let store = opened.store;
    let recovered_and_closed = async {
        let recovered = recovered.await;
        if let Some(store) = &store {
            store.close().await;
        }
        recovered
    };
    let shutdown = async {
        if let Connection::Local(engine) = &conn {
            // Bounded: a removal that a stuck daemon holds up is left to the sweep.
            let budget = std::time::Duration::from_secs(30);
            if tokio::time::timeout(budget, engine.shutdown())
                .await
                .is_err()
            {
                eprintln!(
                    "crownest: the run's sandbox was not removed within 30 s; the next sweep removes it"
                );
            }
        }
    };
    let (recovered, ()) = tokio::join!(recovered_and_closed, shutdown);
    if let Ok(Err(e)) = recovered.map(|j| j.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")))) {
        eprintln!("crownest: recovery: {}", crate::exit::describe(&e));
    }
    exit
}

/// Uploads the prepared source: streamed into the local engine, or sent to the server.
async fn upload_to(
    conn: &Connection,
    id: &RunId,
    source: &upload::PreparedSource,
    bar: Option<indicatif::ProgressBar>,
) -> Result<(), Error> {
    match conn {
        Connection::Local(engine) => upload::upload_and_start(engine, id, source, bar).await,
        Connection::Remote(client) => {
            let progress = bar.map(|bar| {
                Arc::new(move |sent: u64| bar.set_position(sent)) as crownest_http::UploadProgress
            });
            client
                .upload_file(id, &source.path, source.declared.as_ref(), progress)
                .await?;
            Ok(())
        }
    }
}

/// Creates, uploads, starts and follows the run.
async fn drive(
    conn: &Connection,
    spec: RunSpec,
    args: &RunArgs,
    source: upload::PreparedSource,
    progress: Progress,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Exit> {
    let tty = !args.json && std::io::stderr().is_terminal();
    let record = conn.create(spec).await?;
    let id = record.id.clone();
    tracing::info!(run = %id, backend = %record.backend, status = %record.status, "run created");
    if let Some(path) = &args.report_id_to {
        report(path, &format!("id {id}"))?;
    }
    if tty && !crate::term::quiet() {
        eprintln!(
            "crownest: run {id} (cancel with Ctrl-C or `crownest{} cancel {id}`)",
            global_flags()
        );
    }
    let mut render = Renderer {
        json: args.json,
        progress,
        last_seq: 0,
        stdout_open: true,
        terminal: None,
        errors_shown: 0,
    };
    let mut events = conn.subscribe(&id, 0);
    if record.status != RunStatus::AwaitingArchive {
        // `--idempotency-key` named a run that exists already: follow it instead of
        // uploading and starting again (a retried `run` never runs the command twice).
        crate::term::note!(
            "crownest: run {id} exists already (same idempotency key): following it"
        );
        if record.status == RunStatus::ArchiveReady {
            conn.start(&id).await?;
        }
        if let Some(path) = &args.report_id_to {
            report(path, "started")?;
        }
        if args.detach {
            println!("{id}");
            return Ok(Exit::Success);
        }
        return follow(conn, &id, args, &mut render, events, interrupts).await;
    }

    // Upload, rendering events meanwhile.
    render.progress.phase("uploading", source.size_bytes);
    let bar = render.progress.bar();
    let uploaded = {
        let upload = upload_to(conn, &id, &source, bar);
        tokio::pin!(upload);
        loop {
            tokio::select! {
                // The upload first: its reads of the store come before the subscription's
                // (a CLI command has one read connection).
                biased;
                r = &mut upload => break Some(r),
                Some(ev) = events.next() => render.event(&ev?),
                _ = interrupts.recv() => break None,
            }
        }
    };
    render.progress.finish();
    match uploaded {
        None => {
            // Interrupted during the upload: nothing ran; end the run as canceled.
            finish_unstarted(conn, &id, &mut render).await;
            eprintln!("crownest: run {id} canceled before it started");
            return Ok(Exit::Canceled);
        }
        Some(Err(e)) => {
            finish_unstarted(conn, &id, &mut render).await;
            // A refusal is an `error` event of this run, printed by now; other errors
            // (I/O, the server) are not.
            if render.errors_shown == 0 || args.json {
                eprintln!("crownest: {}", e.chain());
            }
            if matches!(e, Error::ArchiveRejected { .. }) {
                eprintln!(
                    "crownest: the archive was refused at upload; the command was not started"
                );
            }
            return Ok(if is_rejection(&e) {
                Exit::Rejected
            } else {
                Exit::Failure
            });
        }
        Some(Ok(())) => {}
    }
    drop(source);

    // A local engine started the run with the upload (`upload_and_start`).
    if matches!(conn, Connection::Remote(_)) {
        conn.start(&id).await?;
    }
    if let Some(path) = &args.report_id_to {
        report(path, "started")?;
    }
    if args.detach {
        // With --server: the server drives the run from here on.
        println!("{id}");
        return Ok(Exit::Success);
    }
    follow(conn, &id, args, &mut render, events, interrupts).await
}

/// Follows a started run to its end, printing events; Ctrl-C cancels it.
async fn follow(
    conn: &Connection,
    id: &RunId,
    args: &RunArgs,
    render: &mut Renderer,
    mut events: crate::connection::Events,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Exit> {
    let id = id.clone();
    let mut cancel_sent = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(ev)) => render.event(&ev),
                Some(Err(e)) => return Err(anyhow::Error::new(e).context(format!("following run {id}"))),
                None => break,
            },
            _ = interrupts.recv() => {
                if cancel_sent {
                    eprintln!("crownest: interrupted again: exiting; run {id} is left to recovery");
                    return Ok(Exit::Canceled);
                }
                cancel_sent = true;
                render.progress.finish();
                eprintln!("crownest: canceling run {id} (Ctrl-C again to exit at once)");
                if let Err(e) = conn.cancel(&id).await {
                    eprintln!("crownest: cancel failed: {}", e.chain());
                }
            }
        }
    }
    render.progress.finish();
    // The exit code comes from the `terminal` event; the record (for the summary) is read
    // after it, which can fail when a server went away right after the end (e.g. it was
    // shut down and canceled the run).
    let record = match (conn.get(&id).await, &render.terminal) {
        (Ok(record), _) => record,
        (Err(e), None) => return Err(anyhow::Error::new(e).context(format!("reading run {id}"))),
        (Err(e), Some((status, failure))) => {
            eprintln!(
                "crownest: run {id} {status}; its record cannot be read: {}",
                e.chain()
            );
            if let Some(f) = failure {
                eprintln!("crownest:   failure: {}: {}", f.kind.as_str(), f.message);
            }
            return Ok(exit_for_outcome(*status, failure.as_ref()));
        }
    };
    if args.json {
        if let Some(f) = &record.failure
            && f.kind == FailureKind::ArchiveRejected
        {
            eprintln!("crownest: {}", f.message);
        }
    } else {
        summary(&record, matches!(conn, Connection::Remote(_)));
    }
    if args.propagate_exit_code {
        return Ok(propagated_exit(&record));
    }
    Ok(exit_for(&record))
}

/// Appends one line to the `--report-id-to` file of a detached run.
fn report(path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// After a refused or interrupted upload: cancel the run (so it does not wait for an
/// archive forever) and print the events up to its end.
async fn finish_unstarted(conn: &Connection, id: &RunId, render: &mut Renderer) {
    if let Err(e) = conn.cancel(id).await {
        eprintln!("crownest: could not cancel run {id}: {}", e.chain());
    }
    while let Ok(batch) = conn.list_events(id, render.last_seq, 1000).await {
        if batch.is_empty() {
            break;
        }
        for ev in &batch {
            render.event(ev);
        }
    }
}
