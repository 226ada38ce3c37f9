//! What the engine tells an operator: metrics through the [`metrics`] facade (a host
//! installs the recorder and exporter it likes; `crownest-http` renders Prometheus text)
//! and the `run` span its tasks run in.
//!
//! Every histogram and counter is derived from what a commit sealed (a `status`, `kill` or
//! `terminal` event and the run record beside it), so metrics say what the chain says and
//! need no call in the code paths that produce those events. Extraction, which leaves no
//! event of its own length, is timed by the driver; sweeps by recovery.
//!
//! Runs per status are counted here, in memory, per engine (not in the global recorder:
//! a process may hold several engines; the HTTP layer renders the one behind its router):
//! set from one aggregate query
//! ([`Store::usage`](crate::Store::usage)) when the engine opens and after each garbage
//! collection pass, and moved by every committed `status` event and every deletion, so a
//! scrape never reads the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::event::{Event, EventKind, KillReason};
use crate::ids::RunId;
use crate::run::RunRecord;
use crate::status::RunStatus;
use crate::store::StoreUsage;

use super::WorkspaceRuns;

/// Metric names (Prometheus text; documented in `docs/operations.md`). `RUNS` and
/// `STORE_BLOB_BYTES` are per engine ([`WorkspaceRuns::runs_by_status`],
/// [`WorkspaceRuns::store_blob_bytes`]); the others go through the facade.
pub mod names {
    /// Gauge `{status}`: runs in the store per status.
    pub const RUNS: &str = "crownest_runs";
    /// Gauge: bytes of stored blobs (as of the last aggregate: start-up and gc passes).
    pub const STORE_BLOB_BYTES: &str = "crownest_store_blob_bytes";
    /// Histogram `{backend}`: seconds from `queued` to `starting`.
    pub const QUEUE_WAIT: &str = "crownest_queue_wait_seconds";
    /// Histogram `{backend, result}`: seconds to extract the archive into the sandbox.
    pub const EXTRACTION: &str = "crownest_extraction_seconds";
    /// Histogram `{backend, status}`: seconds from `running` to the command's end.
    pub const COMMAND_DURATION: &str = "crownest_command_duration_seconds";
    /// Histogram `{backend, status}`: seconds from creation to the terminal event.
    pub const RUN_DURATION: &str = "crownest_run_duration_seconds";
    /// Counter `{backend, status, failure_kind}`: runs ended (`failure_kind` is `none`
    /// for a run without failure).
    pub const RUNS_ENDED: &str = "crownest_runs_ended_total";
    /// Counter `{backend, rung, reason}`: kill ladder rungs carried out (`SIGTERM`,
    /// `SIGKILL`, `destroy`).
    pub const KILL_RUNGS: &str = "crownest_kill_rungs_total";
    /// Counter `{backend, result}`: orphan sweeps (`ok` or `error`).
    pub const SWEEPS: &str = "crownest_sweeps_total";
    /// Counter `{backend}`: orphaned sandboxes a sweep removed.
    pub const ORPHANS_REMOVED: &str = "crownest_orphans_removed_total";
    /// Counter: blobs deleted by garbage collection.
    pub const GC_BLOBS_DELETED: &str = "crownest_gc_blobs_deleted_total";
    /// Gauge `{backend, template, state}`: warm pool sandboxes per state (`ready`,
    /// `creating`, `in_use`), per engine ([`WorkspaceRuns::pools`](crate::WorkspaceRuns::pools)).
    pub const POOL_SANDBOXES: &str = "crownest_sandbox_pool_sandboxes";
    /// Gauge `{backend, template}`: the configured pool size.
    pub const POOL_SIZE: &str = "crownest_sandbox_pool_size";
    /// Gauge `{backend, template}`: the memory limits of the ready sandboxes, summed.
    pub const POOL_IDLE_MEMORY: &str = "crownest_sandbox_pool_idle_memory_limit_bytes";
    /// Counter `{backend, template, result}`: runs that took a pool sandbox (`hit`) or got
    /// a fresh one (`miss`).
    pub const POOL_CLAIMS: &str = "crownest_sandbox_pool_claims_total";
}

/// Runs per status, as this engine knows them (see the module docs).
#[derive(Debug)]
pub(crate) struct RunGauges {
    counts: [AtomicI64; RunStatus::ALL.len()],
    /// -1 until the store reported them.
    blob_bytes: AtomicI64,
}

impl Default for RunGauges {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            blob_bytes: AtomicI64::new(-1),
        }
    }
}

fn slot(status: RunStatus) -> usize {
    RunStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

fn seconds(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

fn kill_reason(reason: KillReason) -> &'static str {
    match reason {
        KillReason::Timeout => "timeout",
        KillReason::Cancel => "cancel",
        KillReason::OutputLimit => "output_limit",
        KillReason::Leftover => "leftover",
    }
}

impl RunGauges {
    fn add(&self, status: RunStatus, delta: i64) {
        self.counts[slot(status)].fetch_add(delta, Ordering::Relaxed);
    }

    /// Sets every count from the store's aggregate.
    pub(crate) fn resync(&self, usage: &StoreUsage) {
        for status in RunStatus::ALL {
            let n = usage.runs_by_status.get(&status).copied().unwrap_or(0);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.counts[slot(status)].store(n, Ordering::Relaxed);
        }
        if let Some(bytes) = usage.blob_bytes {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.blob_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// A deleted run leaves its status.
    pub(crate) fn on_delete(&self, status: RunStatus) {
        self.add(status, -1);
    }

    /// What one successful commit of `record` sealed: status moves, queue wait, kill rungs,
    /// and at the terminal event the run's counters and durations.
    pub(crate) fn on_commit(&self, record: &RunRecord, sealed: &[Event]) {
        let backend = record.backend.clone();
        for event in sealed {
            match &event.kind {
                EventKind::Status { status, previous } => {
                    if let Some(previous) = previous {
                        self.add(*previous, -1);
                    }
                    self.add(*status, 1);
                    if *status == RunStatus::Starting
                        && *previous == Some(RunStatus::Queued)
                        && let Some(queued) = record.timestamps.started
                    {
                        metrics::histogram!(names::QUEUE_WAIT, "backend" => backend.clone())
                            .record(seconds(event.at.millis_since(queued)));
                    }
                }
                EventKind::Kill {
                    signal,
                    action,
                    reason,
                } => {
                    let rung = signal
                        .clone()
                        .or_else(|| action.clone())
                        .unwrap_or_else(|| "unknown".into());
                    metrics::counter!(names::KILL_RUNGS, "backend" => backend.clone(),
                        "rung" => rung, "reason" => kill_reason(*reason))
                    .increment(1);
                }
                EventKind::Terminal {
                    status,
                    failure,
                    duration_ms,
                    ..
                } => {
                    let kind = failure.as_ref().map_or("none", |f| f.kind.as_str());
                    metrics::counter!(names::RUNS_ENDED, "backend" => backend.clone(),
                        "status" => status.as_str(), "failure_kind" => kind)
                    .increment(1);
                    metrics::histogram!(names::RUN_DURATION, "backend" => backend.clone(),
                        "status" => status.as_str())
                    .record(seconds(*duration_ms));
                    if let (Some(from), Some(to)) = (
                        record.timestamps.command_started,
                        record.timestamps.command_ended,
                    ) {
                        metrics::histogram!(names::COMMAND_DURATION,
                            "backend" => backend.clone(), "status" => status.as_str())
                        .record(seconds(to.millis_since(from)));
                    }
                }
                _ => {}
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<RunStatus, u64> {
        RunStatus::ALL
            .into_iter()
            .map(|s| {
                let n = self.counts[slot(s)].load(Ordering::Relaxed);
                (s, u64::try_from(n).unwrap_or(0))
            })
            .collect()
    }
}

/// The driver timed an extraction into a sandbox.
pub(crate) fn extraction(backend: &str, took: Duration, ok: bool) {
    metrics::histogram!(names::EXTRACTION, "backend" => backend.to_owned(),
        "result" => if ok { "ok" } else { "error" })
    .record(took.as_secs_f64());
}

/// Recovery's orphan sweep of one backend.
pub(crate) fn swept(backend: &str, result: &crate::Result<Vec<String>>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(names::SWEEPS, "backend" => backend.to_owned(), "result" => outcome)
        .increment(1);
    if let Ok(removed) = result {
        metrics::counter!(names::ORPHANS_REMOVED, "backend" => backend.to_owned())
            .increment(removed.len() as u64);
    }
}

/// The span a run's work runs in (its driver task, its uploads): logs of the engine, the
/// backend and the store inside it carry `run_id`.
pub(crate) fn run_span(id: &RunId) -> tracing::Span {
    tracing::info_span!("run", run_id = %id)
}

impl WorkspaceRuns {
    /// Runs per status, as this engine counts them: from the store's aggregate when it
    /// opened (and after each garbage-collection pass), moved by every status change it
    /// committed since. Runs other processes change on a shared store are seen at the next
    /// garbage-collection pass. No store read.
    pub fn runs_by_status(&self) -> BTreeMap<RunStatus, u64> {
        self.inner.gauges.snapshot()
    }

    /// Bytes of the stored blobs as of the last aggregate (open, garbage collection), when
    /// the store counts them.
    pub fn store_blob_bytes(&self) -> Option<u64> {
        u64::try_from(self.inner.gauges.blob_bytes.load(Ordering::Relaxed)).ok()
    }

    /// Readiness: `Ok` when the store accepts a write now. Stores a small fixed blob (the
    /// same bytes every time, so it is one content-addressed blob however often it runs).
    pub async fn check_store_writable(&self) -> crate::Result<()> {
        use futures::StreamExt as _;
        const PROBE: &[u8] = b"crownest readiness probe\n";
        let descriptor = crate::run::ArchiveDescriptor {
            size_bytes: PROBE.len() as u64,
            sha256: crate::ids::Sha256Digest::of(PROBE),
        };
        let data = futures::stream::once(async { Ok(bytes::Bytes::from_static(PROBE)) }).boxed();
        self.inner
            .store
            .put_blob(
                data,
                crate::store::BlobExpect {
                    descriptor: Some(&descriptor),
                    max_bytes: descriptor.size_bytes,
                },
            )
            .await
            .map(|_| ())
    }

    /// Re-reads the store's aggregate ([`crate::Store::usage`]) into the gauges; a failure
    /// is logged and leaves them as they were.
    pub async fn refresh_usage(&self) {
        match self.inner.store.usage().await {
            Ok(usage) => self.inner.gauges.resync(&usage),
            Err(e) => tracing::warn!(error = %e.chain(), "counting the store's runs failed"),
        }
    }
}
