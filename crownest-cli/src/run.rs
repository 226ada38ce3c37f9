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

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use crownest_core::event::{ArchivePhase, KillReason};
use crownest_core::{
    Error, Event, EventKind, Failure, FailureKind, RunId, RunRecord, RunSpec, RunStatus,
    SecretValue,
};
use futures::StreamExt as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::connection::{Connection, Target};
use crate::exit::{Exit, is_rejection, usage};
use crate::home;
use crate::progress::Progress;
use crate::upload;

/// Builds the run spec from the arguments.
fn spec(args: &RunArgs) -> anyhow::Result<RunSpec> {
    let mut spec = RunSpec::new(args.command.clone())
        .with_template(args.template.clone())
        .with_cwd(args.cwd.clone());
    if let Some(b) = &args.backend {
        spec = spec.with_backend(b.clone());
    }
    for a in &args.artifacts {
        spec = spec.with_artifact(a.clone(), false);
    }
    for a in &args.required_artifacts {
        spec = spec.with_artifact(a.clone(), true);
    }
    if let Some(t) = args.timeout {
        spec = spec.with_timeout_ms(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(k) = args.keep_sandbox {
        spec = spec.with_keep_sandbox(u64::try_from(k.as_millis()).unwrap_or(u64::MAX));
    }
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) => spec = spec.with_env(k, v),
            None => match std::env::var(kv) {
                Ok(v) => spec = spec.with_env(kv.clone(), v),
                Err(_) => {
                    return Err(usage(format!(
                        "--env {kv}: not set in this environment (use --env {kv}=VALUE)"
                    )));
                }
            },
        }
    }
    for kv in &args.labels {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--label {kv}: give K=V")))?;
        if k.is_empty() {
            return Err(usage(format!("--label {kv}: the key is empty")));
        }
        spec.labels.insert(k.to_owned(), v.to_owned());
    }
    if let Some(n) = &args.network {
        spec.network = match n.as_str() {
            "enabled" => crownest_core::Network::Enabled,
            _ => crownest_core::Network::None,
        };
    }
    spec.idempotency_key.clone_from(&args.idempotency_key);
    if args.memory.is_some() {
        spec.limits.memory_bytes = args.memory;
    }
    if args.output_limit.is_some() {
        spec.limits.output_bytes_per_stream = args.output_limit;
    }
    if args.pids.is_some() {
        spec.limits.pids = args.pids;
    }
    for (name, value) in secrets(args)? {
        spec = spec.with_secret(name, value);
    }
    Ok(spec)
}

/// The `--secret` and `--secret-file` values, read from this environment and from files
/// (never from argv, which `ps` shows). Messages name the variable, never its value.
fn secrets(args: &RunArgs) -> anyhow::Result<Vec<(String, SecretValue)>> {
    let mut out: Vec<(String, SecretValue)> = Vec::new();
    for name in &args.secrets {
        if name.contains('=') {
            let name = name.split('=').next().unwrap_or_default();
            return Err(usage(format!(
                "--secret takes a variable name, not a value: export {name} and pass                  --secret {name}, or use --secret-file {name}=PATH (a value on the command                  line is visible to every user in `ps`)"
            )));
        }
        let value = match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(usage(format!(
                    "--secret {name}: {name} is not set in this environment"
                )));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(usage(format!(
                    "--secret {name}: the value of {name} is not UTF-8"
                )));
            }
        };
        out.push((name.clone(), SecretValue::new(value)));
    }
    for kv in &args.secret_files {
        let Some((name, path)) = kv.split_once('=') else {
            return Err(usage(format!("--secret-file {kv}: expected K=PATH")));
        };
        let mut bytes = std::fs::read(path)
            .map_err(|e| usage(format!("--secret-file {name}: reading {path}: {e}")))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let value = String::from_utf8(bytes)
            .map_err(|_| usage(format!("--secret-file {name}: {path} is not UTF-8 text")))?;
        out.push((name.to_owned(), SecretValue::new(value)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &out {
        if !seen.insert(name.as_str()) {
            return Err(usage(format!("secret {name} is given twice")));
        }
    }
    Ok(out)
}

/// Prints events as they come: the command's output, or JSON lines.
struct Renderer {
    json: bool,
    progress: Progress,
    last_seq: u64,
    stdout_open: bool,
    /// Status and failure of the `terminal` event, once seen.
    terminal: Option<(RunStatus, Option<Failure>)>,
    /// `error` events printed (so a refusal is not printed twice).
    errors_shown: usize,
}

impl Renderer {
    fn event(&mut self, ev: &Event) {
        self.last_seq = ev.seq;
        if let EventKind::Terminal {
            status, failure, ..
        } = &ev.kind
        {
            self.terminal = Some((*status, failure.clone()));
        }
        if self.json {
            if self.stdout_open {
                let mut out = std::io::stdout().lock();
                let ok = serde_json::to_writer(&mut out, ev).is_ok()
                    && out.write_all(b"\n").is_ok()
                    && out.flush().is_ok();
                // A closed pipe: stop printing, keep driving the run.
                self.stdout_open = ok;
            }
            return;
        }
        match &ev.kind {
            EventKind::Stdout(chunk) => {
                self.progress.finish();
                if self.stdout_open {
                    let mut out = std::io::stdout().lock();
                    self.stdout_open = out.write_all(&chunk.bytes()).is_ok() && out.flush().is_ok();
                }
            }
            EventKind::Stderr(chunk) => {
                self.progress.finish();
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&chunk.bytes());
                let _ = err.flush();
            }
            EventKind::ArchiveProgress {
                phase,
                bytes_done,
                bytes_total,
                entries,
            } => {
                let name = match phase {
                    // Uploads are counted locally, as the bytes leave.
                    ArchivePhase::Receiving => return,
                    ArchivePhase::Verifying => "verifying",
                    ArchivePhase::Extracting => "extracting",
                };
                self.progress.phase(name, *bytes_total);
                self.progress.set(*bytes_done);
                self.progress.message(format!("{entries} entries"));
            }
            EventKind::Status { status, .. } if *status == RunStatus::Running => {
                self.progress.finish()
            }
            EventKind::OutputTruncated { stream, .. } => {
                self.progress.finish();
                eprintln!(
                    "crownest: {} reached its stored limit; the rest is drained and dropped",
                    stream.as_str()
                );
            }
            EventKind::Kill {
                signal,
                action,
                reason,
            } => {
                self.progress.finish();
                let what = signal.as_deref().or(action.as_deref()).unwrap_or("kill");
                let why = match reason {
                    KillReason::Timeout => "timeout",
                    KillReason::Cancel => "cancel",
                    KillReason::OutputLimit => "output limit",
                    KillReason::Leftover => "leftover processes",
                };
                eprintln!("crownest: {what} ({why})");
            }
            EventKind::Error { code, message } => {
                self.progress.finish();
                eprintln!("crownest: error: {code}: {message}");
                self.errors_shown += 1;
            }
            _ => {}
        }
    }
}

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
    let mut progress = Progress::new(tty);
    let source = upload::prepare(&args.source, declared, &mut progress)?;

    if let Some(client) = target.server() {
        let conn = Connection::Remote(client.clone());
        return drive(&conn, spec, &args, source, progress, &mut interrupts).await;
    }
    let opened = home::open_for_run(&target.home()?, spec.backend.as_deref()).await?;
    let conn = Connection::Local(opened.engine);
    let exit = drive(&conn, spec, &args, source, progress, &mut interrupts).await;
    // Let recovery (running beside the run) finish, briefly: it is idempotent, and the next
    // command redoes whatever it did not get to.
    if let Ok(Err(e)) = tokio::time::timeout(std::time::Duration::from_secs(5), opened.recovery)
        .await
        .map(|j| j.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}"))))
    {
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
        Connection::Local(engine) => upload::upload(engine, id, source, bar).await,
        Connection::Remote(client) => {
            let progress = bar.map(|bar| {
                Arc::new(move |sent: u64| bar.set_position(sent)) as crownest_http::UploadProgress
            });
            client
                .upload_file(id, &source.path, Some(&source.declared), progress)
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
    if let Some(path) = &args.report_id_to {
        report(path, &format!("id {id}"))?;
    }
    if tty {
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
        eprintln!("crownest: run {id} exists already (same idempotency key): following it");
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
    render
        .progress
        .phase("uploading", source.declared.size_bytes);
    let bar = render.progress.bar();
    let uploaded = {
        let upload = upload_to(conn, &id, &source, bar);
        tokio::pin!(upload);
        loop {
            tokio::select! {
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

    conn.start(&id).await?;
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
        summary(&record);
    }
    if args.propagate_exit_code {
        return Ok(propagated_exit(&record));
    }
    Ok(exit_for(&record))
}

/// `--propagate-exit-code`: the command's own exit code, 128 + the signal that killed it,
/// else the usual mapping (a run that never ran its command).
fn propagated_exit(record: &RunRecord) -> Exit {
    if record.status == RunStatus::Canceled {
        return Exit::Canceled;
    }
    let code = match (record.exit_code, record.signal) {
        (Some(code), _) => u8::try_from(code.rem_euclid(256)).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig).clamp(0, 255)).unwrap_or(1),
        _ => return exit_for(record),
    };
    // A failed run never exits 0 (a command that exited 0 but timed out, or left a
    // required artifact missing, or exited 256).
    if code == 0 && record.status != RunStatus::Succeeded {
        return exit_for(record);
    }
    Exit::Code(code)
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

/// 0 succeeded, 1 failed, 2 archive rejected at start, 130 canceled.
pub(crate) fn exit_for(record: &RunRecord) -> Exit {
    exit_for_outcome(record.status, record.failure.as_ref())
}

/// [`exit_for`] from a status and failure (a record's, or a `terminal` event's).
fn exit_for_outcome(status: RunStatus, failure: Option<&Failure>) -> Exit {
    match status {
        RunStatus::Succeeded => Exit::Success,
        RunStatus::Canceled => Exit::Canceled,
        RunStatus::Failed if failure.is_some_and(|f| f.kind == FailureKind::ArchiveRejected) => {
            Exit::Rejected
        }
        _ => Exit::Failure,
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The end-of-run summary on stderr.
fn summary(record: &RunRecord) {
    let id = &record.id;
    let duration = match (record.timestamps.created, record.timestamps.terminal) {
        (Some(c), Some(t)) => format!(" in {:.2} s", t.millis_since(c) as f64 / 1000.0),
        _ => String::new(),
    };
    let code = match (record.exit_code, record.signal) {
        (Some(c), _) => format!(", exit code {c}"),
        (None, Some(s)) => format!(", signal {s}"),
        _ => String::new(),
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "crownest: run {id} {}{code}{duration}", record.status);
    if let Some(f) = &record.failure {
        let _ = writeln!(
            err,
            "crownest:   failure: {}: {}",
            f.kind.as_str(),
            f.message
        );
        if f.kind == FailureKind::ArchiveRejected {
            let _ = writeln!(err, "crownest:   the command was not started");
        }
    }
    for a in &record.artifacts {
        let _ = writeln!(
            err,
            "crownest:   artifact {}  {}  {}  sha256 {}",
            a.path,
            a.artifact_id,
            human_bytes(a.size_bytes),
            a.sha256
        );
    }
    for a in &record.artifact_errors {
        let _ = writeln!(
            err,
            "crownest:   artifact {} not collected: {}",
            a.path, a.message
        );
    }
    if let Some(sb) = &record.sandbox
        && sb.kept
    {
        let until = sb.keep_until.map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(err, "crownest:   sandbox {} kept until {until}", sb.id);
    }
    if record.status.is_terminal() {
        let g = global_flags();
        let _ = writeln!(
            err,
            "crownest:   evidence: crownest{g} evidence {id}  (verify: crownest{g} verify {id})"
        );
    }
}

/// The `--home` / `--server` given on this command line, as they must be repeated for a
/// printed hint to work when copied (`" --home /tmp/h"`, or empty). Tokens are never
/// repeated (they come from `CROWNEST_TOKEN` or a file).
pub(crate) fn global_flags() -> String {
    let mut out = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        for flag in ["--home", "--server"] {
            if a == flag {
                if let Some(v) = args.next() {
                    out.push_str(&format!(" {flag} {}", shell_quote(&v)));
                }
            } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                out.push_str(&format!(" {flag} {}", shell_quote(v)));
            }
        }
    }
    out
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome() {
        use crownest_core::Limits;
        use crownest_core::run::RunOwner;
        let mut r = RunRecord::new(
            RunId::new(),
            RunSpec::new(["true"]),
            crownest_backend_process::BACKEND.into(),
            Limits::default(),
            RunOwner::current("test"),
        );
        r.status = RunStatus::Succeeded;
        assert_eq!(exit_for(&r), Exit::Success);
        r.status = RunStatus::Canceled;
        assert_eq!(exit_for(&r), Exit::Canceled);
        r.status = RunStatus::Failed;
        r.failure = Some(Failure::new(FailureKind::ExitNonzero, "exit 3"));
        assert_eq!(exit_for(&r), Exit::Failure);
        // Refused at the start of the run: rejected input, like a refusal at upload.
        r.failure = Some(Failure::new(
            FailureKind::ArchiveRejected,
            "archive rejected (link_escapes)",
        ));
        assert_eq!(exit_for(&r), Exit::Rejected);
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 1), "5.0 MiB");
    }
}
