//! Read-side commands: `runs`, `show`, `events`, `evidence`; and `cancel`, `delete`.
//!
//! Locally they open the engine like `run` does, so recovery runs first: after a crash,
//! `crownest runs` already shows the reclaimed runs as `failed` (`host_restarted`). With
//! `--server` they go through the HTTP client (SSE for `events --follow`).

use std::io::Write as _;

use std::collections::BTreeMap;

use crownest_core::store::RunQuery;
use crownest_core::{Event, EventKind, RunId, RunRecord, RunStatus, Timestamp};
use futures::StreamExt as _;

use crate::cli::{EventsArgs, EvidenceArgs, LogsArgs, RunRef, RunsArgs};
use crate::connection::{Connection, Target};
use crate::exit::{Exit, usage};

/// Parses a run id (an unknown shape is "not found", exit 2).
pub(crate) fn run_id(s: &str) -> anyhow::Result<RunId> {
    Ok(RunId::parse(s)?)
}

/// Writes one JSON value and a newline; `false` once stdout is closed.
fn json_line<T: serde::Serialize>(out: &mut impl std::io::Write, value: &T) -> bool {
    serde_json::to_writer(&mut *out, value).is_ok() && out.write_all(b"\n").is_ok()
}

/// `--since` / `--until`: RFC 3339, or a duration before now (`30m`, `2h`, `7d`).
fn time_filter(flag: &str, value: &str) -> anyhow::Result<Timestamp> {
    if let Some(t) = Timestamp::parse(value.trim()) {
        return Ok(t);
    }
    let ago = crate::cli::parse_duration(value).map_err(|e| {
        usage(format!(
            "{flag} {value:?}: give an RFC 3339 time like 2026-01-31T12:00:00Z or a duration \
             ago like 2h ({e})"
        ))
    })?;
    let ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(Timestamp::from_millis(
        Timestamp::now().as_millis().saturating_sub(ms),
    ))
}

/// The filters of `crownest runs` as the store's query (the HTTP list filters).
fn runs_query(args: &RunsArgs) -> anyhow::Result<RunQuery> {
    let status = match &args.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            usage(format!(
                "unknown status {s:?} (one of: {})",
                RunStatus::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
        None => None,
    };
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| usage(format!("--label {label:?}: give KEY=VALUE")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(RunQuery {
        status,
        limit: args.limit.max(1),
        before: None,
        backend: args.backend.clone(),
        labels,
        created_after: args
            .since
            .as_deref()
            .map(|v| time_filter("--since", v))
            .transpose()?,
        created_before: args
            .until
            .as_deref()
            .map(|v| time_filter("--until", v))
            .transpose()?,
    })
}

/// `crownest runs`.
pub(crate) async fn runs(target: &Target, args: RunsArgs) -> anyhow::Result<Exit> {
    let query = runs_query(&args)?;
    let conn = target.open().await?;
    let runs = conn.list(&query).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &runs {
            if !json_line(&mut out, r) {
                break;
            }
        }
    } else {
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:<8} {:<24} {:>5}  COMMAND",
            "RUN", "STATUS", "BACKEND", "CREATED", "EXIT"
        );
        for r in &runs {
            let _ = writeln!(out, "{}", table_row(r));
        }
    }
    let _ = out.flush();
    Ok(Exit::Success)
}

fn table_row(r: &RunRecord) -> String {
    let created = r
        .timestamps
        .created
        .map(|t| t.to_string())
        .unwrap_or_default();
    let exit = match (r.exit_code, r.signal) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("sig{s}"),
        _ => "-".into(),
    };
    // One line per run: newlines, tabs and other control characters are shown escaped.
    let mut command: String = r
        .spec
        .command
        .join(" ")
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    if command.chars().count() > 60 {
        command = command.chars().take(57).collect::<String>() + "...";
    }
    format!(
        "{:<40} {:<16} {:<8} {:<24} {:>5}  {command}",
        r.id.as_str(),
        r.status.as_str(),
        r.backend,
        created,
        exit
    )
}

/// `crownest delete RUN`: an ended run, for good (a live one is refused: exit 2).
pub(crate) async fn delete(target: &Target, args: RunRef) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    conn.delete(&id).await?;
    println!("run {id} deleted");
    Ok(Exit::Success)
}

/// `crownest show RUN`: the run record as pretty JSON.
pub(crate) async fn show(target: &Target, args: RunRef) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    let record = conn.get(&id).await?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &record)?;
    writeln!(out)?;
    Ok(Exit::Success)
}

/// `crownest events RUN`: JSON lines; with `--follow`, live until `terminal`.
pub(crate) async fn events(target: &Target, args: EventsArgs) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    conn.get(&id).await?;
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    if remaining == 0 {
        return Ok(Exit::Success);
    }
    if args.follow {
        // `--limit` bounds a window; with `--follow` the window is printed and following
        // goes on after it, without gap, until the run ends.
        let mut stream = conn.subscribe(&id, args.after_seq);
        while let Some(ev) = stream.next().await {
            let ev: Event = ev?;
            let mut out = std::io::stdout().lock();
            if !json_line(&mut out, &ev) || out.flush().is_err() {
                break;
            }
        }
        return Ok(Exit::Success);
    }
    let mut after = args.after_seq;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while remaining > 0 {
        let batch = conn.list_events(&id, after, remaining.min(1000)).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for ev in &batch {
            if !json_line(&mut out, ev) {
                return Ok(Exit::Success);
            }
        }
        remaining = remaining.saturating_sub(batch.len());
    }
    let _ = out.flush();
    Ok(Exit::Success)
}

/// `crownest evidence RUN [--in-toto | --dsse [--key FILE]]`.
pub(crate) async fn evidence(target: &Target, args: EvidenceArgs) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    let mut out = std::io::stdout().lock();
    if args.dsse {
        let envelope = match target.server() {
            Some(_) if args.key.is_some() => {
                return Err(usage(
                    "--key signs locally; with --server the server signs with its own key",
                ));
            }
            Some(client) => client.evidence_dsse(&id).await?,
            None => {
                let stored = match (&conn, &args.key) {
                    (Connection::Local(engine), None) => engine.evidence_envelope(&id).await?,
                    _ => None,
                };
                match stored {
                    // Signed in the run's terminal commit: what the host saw at the end.
                    Some(envelope) => envelope,
                    None => {
                        let key =
                            crate::hostkey::signing_key(&target.home()?, args.key.as_deref())?;
                        if args.key.is_none() {
                            eprintln!(
                                "crownest: evidence: run {id} ended without a signed envelope \
                                 (no host key then, or an older run); signing the stored bundle now"
                            );
                        }
                        conn.evidence(&id).await?.to_dsse(&key)
                    }
                }
            }
        };
        serde_json::to_writer_pretty(&mut out, &envelope)?;
    } else if args.in_toto {
        serde_json::to_writer_pretty(&mut out, &conn.evidence_in_toto(&id).await?)?;
    } else {
        serde_json::to_writer_pretty(&mut out, &conn.evidence(&id).await?)?;
    }
    writeln!(out)?;
    Ok(Exit::Success)
}

/// `crownest logs RUN [--stdout|--stderr] [--follow]`: the raw bytes of the run's output
/// streams as stored (stdout to stdout, stderr to stderr; with `--stderr` alone, stderr's
/// bytes go to stdout so they can be piped). With `--follow`, live until the run ends.
pub(crate) async fn logs(target: &Target, args: LogsArgs) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    conn.get(&id).await?;
    let want_out = !args.stderr;
    let want_err = !args.stdout;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut write = |ev: &Event| -> bool {
        let (chunk, to_err) = match &ev.kind {
            EventKind::Stdout(c) if want_out => (c, false),
            EventKind::Stderr(c) if want_err => (c, want_out),
            _ => return true,
        };
        let bytes = chunk.bytes();
        if to_err {
            err.write_all(&bytes).is_ok()
        } else {
            out.write_all(&bytes).and_then(|()| out.flush()).is_ok()
        }
    };
    if args.follow {
        let mut events = conn.subscribe(&id, 0);
        while let Some(ev) = events.next().await {
            if !write(&ev?) {
                break;
            }
        }
    } else {
        let mut after = 0;
        loop {
            let batch = conn.list_events(&id, after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            if !batch.iter().all(&mut write) {
                break;
            }
        }
    }
    Ok(Exit::Success)
}

/// `crownest cancel RUN`: ends a run that has not started at once; asks the driver of a
/// starting or running one (in this process or another) to run the kill ladder.
pub(crate) async fn cancel(target: &Target, args: RunRef) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    let record = conn.cancel(&id).await?;
    if record.status.is_terminal() {
        println!("run {id} {}", record.status);
    } else {
        println!(
            "cancel requested for run {id} ({}); its driver stops it",
            record.status
        );
    }
    Ok(Exit::Success)
}
