//! [`WorkspaceRuns`]: the embeddable engine.
//!
//! Reading order for one run: [`WorkspaceRuns::create`] (`control.rs`) stores it in
//! `awaiting_archive`; [`WorkspaceRuns::upload_archive`] (`intake.rs`, or a staged
//! transfer) verifies the bytes and the tar against the extraction policy and moves it to
//! `archive_ready`; [`WorkspaceRuns::start`] (`control.rs`) moves it to `queued` and spawns
//! its driver task (`driver/`),
//! the only writer of its events from then on: slot → `starting` (sandbox created, archive
//! extracted) → `running` (output streamed, heartbeats, deadline and kill ladder) →
//! `finalizing` (artifacts, destroy or keep) → one commit of terminal event + terminal
//! record + Evidence Bundle.
//!
//! Nothing grows without bound: staged transfers are capped (`staging.rs`), a refused
//! archive's blob is deleted (`rejected.rs`), runs that never get an archive expire
//! (`expiry.rs`), and [`WorkspaceRuns::collect_garbage`] (`gc.rs`) runs both with the
//! store's own pass.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the configuration, the shared state, accessors |
//! | `builder.rs` | [`WorkspaceRunsBuilder`]: backends, configuration, host key, open |
//! | `control.rs` | create, start, cancel, delete |
//! | `read.rs` | records, event windows, evidence, artifacts, `wait` |
//! | `commit.rs` | the one commit path, `set_status` (the status gate's commit), `terminate` |
//! | `recovery.rs` | reclaiming runs whose owner is gone, the backends' sweeps |
//! | `coordinate.rs` | on a shared store: the lease heartbeat, reclaim passes, claiming queued runs |

mod artifacts;
mod builder;
mod commit;
mod control;
mod coordinate;
mod driver;
mod expiry;
mod gc;
mod intake;
mod ladder;
pub mod observe;
mod prepare;
mod read;
mod recovery;
mod rejected;
pub(crate) mod sink;
pub mod staging;
mod subscribe;
mod templates;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::backend::SandboxBackend;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::gc::GcPolicy;
use crate::ids::RunId;
use crate::ownership::RunOwner;
use crate::secret::SecretValue;
use crate::signing::HostKey;
use crate::spec::Limits;
use crate::store::Store;

pub use builder::WorkspaceRunsBuilder;
pub use gc::GcTask;
pub use intake::{TransferStatus, reader_stream};
pub use recovery::RecoveryReport;
pub use subscribe::EventStream;

/// Engine configuration. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Backend used when a spec names none. Default: the first registered backend.
    pub default_backend: Option<String>,
    /// Limits applied when a spec does not override them (DESIGN §7).
    pub defaults: Limits,
    /// The most a spec may ask for.
    pub maxima: Limits,
    /// Runs executing at once; more wait in `queued`. Default: 8.
    pub max_concurrent_runs: usize,
    /// Interval of `heartbeat` events while running. Default: 15 s.
    pub heartbeat_interval: Duration,
    /// How often a driver checks the store for a cancel requested by another process.
    /// Default: 250 ms.
    pub cancel_poll_interval: Duration,
    /// How often a subscriber re-reads the store when no in-process notification arrives
    /// (runs driven by another process). Default: 200 ms; on a shared store
    /// ([`crate::store::coordination`]) at most 100 ms, since runs there are often driven by
    /// another host (the store is the source of truth; a notifying commit would take a
    /// database-wide lock on every batch of output).
    pub subscribe_poll_interval: Duration,
    /// Largest direct upload. Default: 32 MiB.
    pub direct_upload_max_bytes: u64,
    /// Largest staged upload. Default: 4 GiB.
    pub staged_upload_max_bytes: u64,
    /// Chunk size of staged transfers. Default: 8 MiB.
    pub chunk_size_bytes: u64,
    /// How long to wait for the command to end after SIGKILL before destroying the sandbox.
    /// Default: 5 s.
    pub kill_confirm_timeout: Duration,
    /// Minimum interval between `archive_progress` events. Default: 100 ms (≤ 10/s).
    pub progress_interval: Duration,
    /// Staged transfers one run may have open at once; one more is refused with
    /// `LimitExceeded { limit: "openTransfersPerRun" }`. Default: 4.
    pub max_open_transfers_per_run: usize,
    /// Declared bytes of all open staged transfers in the store; a transfer that would pass
    /// it is refused with `LimitExceeded { limit: "stagedBytesPerEngine" }`. Default: 16 GiB.
    pub max_staged_bytes: u64,
    /// A run still in `awaiting_archive` this long after it was created is ended `canceled`
    /// (with a `limit_exceeded` failure and its evidence) by the next
    /// [`WorkspaceRuns::collect_garbage`]. Default: 24 h.
    pub awaiting_archive_ttl: Duration,
    /// Trees prepared at upload (the one-pass path, `docs/archive.md`) kept or being made at
    /// once, waiting for their runs to start. An upload past it is checked without keeping a
    /// tree, and its run extracts the stored archive at start. Bounds what uploads that are
    /// never started can make the host hold (each tree up to `limits.extractedBytes`).
    /// Default: 8.
    pub max_prepared_trees: usize,
    /// Ages for the store's part of [`WorkspaceRuns::collect_garbage`]. Default:
    /// [`GcPolicy::default`] (blobs 1 h, transfers 24 h, temp files 1 h).
    pub gc: GcPolicy,
    /// On a shared store ([`crate::store::coordination`]): how long this engine's lease
    /// lasts without renewal. It is renewed every third of it, and every engine looks for
    /// expired leases as often, so a lost engine's runs are failed `host_restarted` within
    /// about `lease_ttl + lease_ttl / 3`. Default: 15 s.
    pub lease_ttl: Duration,
    /// On a shared store: how often the engine looks for queued runs to claim when no
    /// notification woke it. Default: 200 ms.
    pub claim_poll_interval: Duration,
    /// On a shared store: whether this engine claims runs other engines queued (a server
    /// does; a short-lived command-line run drives only its own). Default: true.
    pub claim_from_queue: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_backend: None,
            defaults: Limits::default(),
            maxima: Limits::default_maxima(),
            max_concurrent_runs: 8,
            heartbeat_interval: Duration::from_secs(15),
            cancel_poll_interval: Duration::from_millis(250),
            subscribe_poll_interval: Duration::from_millis(200),
            direct_upload_max_bytes: 32 * 1024 * 1024,
            staged_upload_max_bytes: 4 * 1024 * 1024 * 1024,
            chunk_size_bytes: 8 * 1024 * 1024,
            kill_confirm_timeout: Duration::from_secs(5),
            progress_interval: Duration::from_millis(100),
            max_open_transfers_per_run: 4,
            max_staged_bytes: 16 * 1024 * 1024 * 1024,
            awaiting_archive_ttl: Duration::from_secs(24 * 3600),
            max_prepared_trees: 8,
            gc: GcPolicy::default(),
            lease_ttl: Duration::from_secs(15),
            claim_poll_interval: Duration::from_millis(200),
            claim_from_queue: true,
        }
    }
}

/// The events of the last commit of a run (shared with its subscribers).
pub(crate) type LiveBatch = Arc<Vec<Event>>;

/// A run being driven by this engine.
#[derive(Debug)]
struct LiveRun {
    cancel: watch::Sender<bool>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    store: Arc<dyn Store>,
    backends: BTreeMap<String, Arc<dyn SandboxBackend>>,
    default_backend: String,
    config: EngineConfig,
    instance: String,
    owner: RunOwner,
    slots: Arc<Semaphore>,
    live: Mutex<HashMap<RunId, LiveRun>>,
    /// Per run created here and not started yet: its secret values (the only place they
    /// are kept; see [`crate::secret`]).
    secrets: Mutex<HashMap<RunId, BTreeMap<String, SecretValue>>>,
    /// Per run: the last committed batch, so caught-up subscribers need not re-read the store.
    watchers: Mutex<HashMap<RunId, watch::Sender<LiveBatch>>>,
    run_locks: Mutex<HashMap<RunId, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Counters>,
    /// Runs per status and store bytes, for `/metrics` (see `observe.rs`).
    gauges: observe::RunGauges,
    /// Held while a new transfer is checked against the caps and stored.
    staging_admission: tokio::sync::Mutex<()>,
    /// Archives being uploaded or verified, by digest (see `rejected.rs`).
    verifying: rejected::Verifying,
    /// Signs each run's evidence in its terminal commit, when set.
    host_key: Option<Arc<HostKey>>,
    /// Template names per backend, for the check at `create` (see `templates.rs`).
    templates: templates::TemplateNames,
    /// Trees prepared at upload, waiting for `start` (see `prepare.rs`).
    prepared: prepare::Prepared,
    /// Wakes this engine's claim loop (a run was queued for any engine, or a slot freed).
    claim_wake: tokio::sync::Notify,
    /// Held by the queue claimer while it holds a slot to look for a queued run
    /// (`coordinate.rs`); a local `start` that finds no slot free waits for that look to
    /// end before it queues, so a slot merely being looked with is not taken as busy.
    claim_probe: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    events_appended: AtomicU64,
    bytes_uploaded: AtomicU64,
    runs_started: AtomicU64,
}

/// Counters of this engine instance since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineMetrics {
    /// Events committed by this engine.
    pub events_appended: u64,
    /// Archive bytes received (direct and staged).
    pub bytes_uploaded: u64,
    /// Runs started.
    pub runs_started: u64,
    /// Runs currently driven by this engine (queued to finalizing).
    pub runs_active: u64,
}

/// The embeddable entry point: creates, feeds, starts, cancels and observes Workspace Runs.
///
/// Cheap to clone (an `Arc` inside). Drivers run as tokio tasks on the current runtime.
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn crownest_core::Store>,
/// #               backend: std::sync::Arc<dyn crownest_core::SandboxBackend>,
/// #               archive: bytes::Bytes) -> crownest_core::Result<()> {
/// use crownest_core::{RunSpec, WorkspaceRuns, ArchiveDescriptor, Sha256Digest};
/// let engine = WorkspaceRuns::builder(store).backend(backend).open().await?;
/// let run = engine.create(RunSpec::new(["python3", "main.py"]).with_artifact("out.txt", true)).await?;
/// let desc = ArchiveDescriptor { size_bytes: archive.len() as u64, sha256: Sha256Digest::of(&archive) };
/// engine.upload_archive(&run.id, &desc, archive).await?;
/// engine.start(&run.id).await?;
/// let done = engine.wait(&run.id).await?;
/// let evidence = engine.evidence(&done.id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkspaceRuns {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkspaceRuns {
    /// The store (the engine's own; the HTTP layer, the CLI and tests read through the
    /// engine's methods, e.g. [`WorkspaceRuns::open_artifact`]).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// This engine's instance id (recorded as the owner of its runs).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Counters since this engine was opened.
    pub fn metrics(&self) -> EngineMetrics {
        let m = &self.inner.metrics;
        EngineMetrics {
            events_appended: m.events_appended.load(Ordering::Relaxed),
            bytes_uploaded: m.bytes_uploaded.load(Ordering::Relaxed),
            runs_started: m.runs_started.load(Ordering::Relaxed),
            runs_active: lock(&self.inner.live).len() as u64,
        }
    }

    /// Registered backends by name.
    pub fn backends(&self) -> &BTreeMap<String, Arc<dyn SandboxBackend>> {
        &self.inner.backends
    }

    /// The backend a spec that names none runs on.
    pub fn default_backend(&self) -> &str {
        &self.inner.default_backend
    }

    /// The warm pools of the registered backends, by backend name (backends without one
    /// are left out).
    pub fn pools(&self) -> BTreeMap<String, Vec<crate::backend::PoolStatus>> {
        self.inner
            .backends
            .iter()
            .map(|(name, b)| (name.clone(), b.pools()))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }

    /// Tells every backend the engine is going away ([`SandboxBackend::shutdown`]: a warm
    /// pool is drained). Runs are not touched: a host cancels or waits for them first (as
    /// `crownest serve` does). The engine can still be used afterwards, without pools.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.inner.backends.values().map(|b| b.shutdown())).await;
    }

    fn backend(&self, name: &str) -> Result<&Arc<dyn SandboxBackend>> {
        self.inner
            .backends
            .get(name)
            .ok_or_else(|| Error::invalid("backend", format!("no backend named {name:?}")))
    }
}
