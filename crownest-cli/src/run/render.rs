//! What `crownest run` prints: the command's output or JSON lines while it runs, the
//! summary after.

use std::io::Write as _;

use crownest_core::event::{ArchivePhase, KillReason};
use crownest_core::run::SandboxRecord;
use crownest_core::{Event, EventKind, Failure, FailureKind, RunRecord, RunStatus};

use super::global_flags;
use crate::progress::Progress;

/// Prints events as they come: the command's output, or JSON lines.
pub(super) struct Renderer {
    pub(super) json: bool,
    pub(super) progress: Progress,
    pub(super) last_seq: u64,
    pub(super) stdout_open: bool,
    /// Status and failure of the `terminal` event, once seen.
    pub(super) terminal: Option<(RunStatus, Option<Failure>)>,
    /// `error` events printed (so a refusal is not printed twice).
    pub(super) errors_shown: usize,
}

impl Renderer {
    pub(super) fn event(&mut self, ev: &Event) {
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

/// Where a kept sandbox is and how to look at it, for a person (commands to copy). With
/// `--server` it is on the server's host: nothing of this host's paths applies.
fn kept_location(backend: &str, sandbox: &SandboxRecord, remote: bool) -> String {
    let id = &sandbox.id;
    if remote {
        return format!(
            "sandbox {id} of the {backend} backend, on the server's host (not this one): look \
             at it there"
        );
    }
    match backend {
        "process" | "wasm" => {
            let dir = crownest_core::hostdir::WorkRoot::default_path(backend).join(id);
            format!("{} (the workspace is its workspace/)", dir.display())
        }
        "docker" => {
            let name = match sandbox.keep_until {
                Some(t) => docker_kept_name(id, t.as_millis()),
                None => id.clone(),
            };
            format!(
                "container {name} (stopped; the workspace is its /workspace): copy it out with \
                 `docker cp {name}:/workspace ./workspace`; for a shell, `docker start {name}` \
                 then `docker exec -it {name} sh`"
            )
        }
        _ => format!("sandbox {id} of backend {backend}"),
    }
}

/// The name of a kept Docker sandbox's container.
#[cfg(feature = "docker")]
fn docker_kept_name(id: &str, until_ms: i64) -> String {
    crownest_backend_docker::kept_container_name(id, until_ms)
}

/// Without the Docker backend in this build no local run is on Docker; its name is the id.
#[cfg(not(feature = "docker"))]
fn docker_kept_name(id: &str, _until_ms: i64) -> String {
    id.to_owned()
}

/// The end-of-run summary on stderr; `remote` when the run is on a `--server`.
pub(super) fn summary(record: &RunRecord, remote: bool) {
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
    let quiet = crate::term::quiet();
    if quiet && record.status == crownest_core::RunStatus::Succeeded {
        return;
    }
    let tone = match record.status {
        crownest_core::RunStatus::Succeeded => crate::term::Tone::Good,
        crownest_core::RunStatus::Canceled => crate::term::Tone::Warn,
        _ => crate::term::Tone::Bad,
    };
    let status = crate::term::paint(record.status.as_str(), tone);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "crownest: run {id} {status}{code}{duration}");
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
    if quiet {
        return;
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
        let until = match sb.keep_until {
            Some(t) => {
                let left = t.as_millis() - crownest_core::Timestamp::now().as_millis();
                let left = std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0));
                let left =
                    humantime::format_duration(std::time::Duration::from_secs(left.as_secs()));
                // A local run's timer dies with this process: the first sweep after the
                // deadline (any later `crownest` command opening the backend) removes it.
                let by = if remote {
                    "the server removes it then".to_owned()
                } else {
                    format!(
                        "then the first crownest command that opens the {} backend removes it",
                        record.backend
                    )
                };
                format!("until {t} (for {left}; {by})")
            }
            None => "(no expiry recorded)".to_owned(),
        };
        let _ = writeln!(
            err,
            "crownest:   sandbox kept {until}: {}",
            kept_location(&record.backend, sb, remote)
        );
    }
    if record.status.is_terminal() {
        let g = global_flags();
        let _ = writeln!(
            err,
            "crownest:   evidence: crownest{g} evidence {id}  (verify: crownest{g} verify {id})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 1), "5.0 MiB");
    }
}
