//! [`WorkspaceRuns`]: the embeddable engine.
//!
//! Reading order for one run: [`WorkspaceRuns::create`] stores it in `awaiting_archive`;
//! [`WorkspaceRuns::upload_archive`] (or a staged transfer) verifies the bytes and the tar
//! against the extraction policy and moves it to `archive_ready`;
//! [`WorkspaceRuns::start`] moves it to `queued` and spawns its driver task (`driver.rs`),
//! the only writer of its events from then on: slot → `starting` (sandbox created, archive
//! extracted) → `running` (output streamed, heartbeats, deadline and kill ladder) →
//! `finalizing` (artifacts, destroy or keep) → one commit of terminal event + terminal
//! record + Evidence Bundle.
//!
//! Nothing grows without bound: staged transfers are capped (`staging.rs`), a refused
//! archive's blob is deleted (`rejected.rs`), runs that never get an archive expire
//! (`expiry.rs`), and [`WorkspaceRuns::collect_garbage`] (`gc.rs`) runs both with the
//! store's own pass.

mod driver;
mod expiry;
mod gc;
mod intake;
mod ladder;
pub mod observe;
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
use crate::capability;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind, Failure, FailureKind, NewEvent, seal};
use crate::evidence::{EvidenceBundle, EvidenceSandbox, OutputSummary, SpecRecord};
use crate::gc::GcPolicy;
use crate::ids::{ArtifactId, RunId};
use crate::lifecycle::{self, Input, transition};
use crate::run::{Artifact, RunOwner, RunRecord};
use crate::secret::SecretValue;
use crate::signing::{DsseEnvelope, HostKey, HostPublicKey};
use crate::spec::{Limits, RunSpec};
use crate::status::RunStatus;
use crate::store::{CreateOutcome, RunCommit, RunQuery, Store};
use crate::time::Timestamp;

pub use gc::GcTask;
pub use intake::{TransferStatus, reader_stream};
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
    /// (runs driven by another process). Default: 200 ms.
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
    /// Ages for the store's part of [`WorkspaceRuns::collect_garbage`]. Default:
    /// [`GcPolicy::default`] (blobs 1 h, transfers 24 h, temp files 1 h).
    pub gc: GcPolicy,
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
            gc: GcPolicy::default(),
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

/// Builds a [`WorkspaceRuns`].
#[derive(Debug)]
pub struct WorkspaceRunsBuilder {
    store: Arc<dyn Store>,
    backends: Vec<Arc<dyn SandboxBackend>>,
    config: EngineConfig,
    recover: bool,
    host_key: Option<Arc<HostKey>>,
}

impl WorkspaceRunsBuilder {
    /// Registers a backend under its `name()`.
    pub fn backend(mut self, backend: Arc<dyn SandboxBackend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Signs every run's evidence with `key` in its terminal commit (a DSSE envelope of the
    /// bundle's in-toto view, stored with the bundle; see
    /// [`WorkspaceRuns::evidence_envelope`]).
    pub fn host_key(mut self, key: Arc<HostKey>) -> Self {
        self.host_key = Some(key);
        self
    }

    /// Skips recovery on open (for read-only tools that must not touch other runs).
    pub fn without_recovery(mut self) -> Self {
        self.recover = false;
        self
    }

    /// Opens the engine and, unless disabled, runs [`WorkspaceRuns::recover`].
    pub async fn open(self) -> Result<WorkspaceRuns> {
        if self.backends.is_empty() {
            return Err(Error::invalid("backends", "register at least one backend"));
        }
        let mut backends = BTreeMap::new();
        for b in &self.backends {
            backends.insert(b.name().to_owned(), b.clone());
        }
        let default_backend = match &self.config.default_backend {
            Some(name) if backends.contains_key(name) => name.clone(),
            Some(name) => {
                return Err(Error::invalid(
                    "defaultBackend",
                    format!("no backend named {name:?}"),
                ));
            }
            None => self.backends[0].name().to_owned(),
        };
        let instance = format!("eng_{}", uuid::Uuid::new_v4().simple());
        let engine = WorkspaceRuns {
            inner: Arc::new(Inner {
                store: self.store,
                backends,
                default_backend,
                slots: Arc::new(Semaphore::new(self.config.max_concurrent_runs.max(1))),
                config: self.config,
                owner: RunOwner::current(&instance),
                instance,
                live: Mutex::default(),
                secrets: Mutex::default(),
                watchers: Mutex::default(),
                run_locks: Mutex::default(),
                metrics: Arc::default(),
                gauges: observe::RunGauges::default(),
                staging_admission: tokio::sync::Mutex::default(),
                verifying: rejected::Verifying::default(),
                host_key: self.host_key,
                templates: templates::TemplateNames::default(),
            }),
        };
        engine.refresh_usage().await;
        if self.recover {
            engine.recover().await?;
        }
        Ok(engine)
    }
}

/// What [`WorkspaceRuns::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Runs failed with `host_restarted`.
    pub reclaimed: Vec<RunId>,
    /// Runs left alone because their owner is alive.
    pub live_elsewhere: Vec<RunId>,
    /// Sandboxes destroyed by `sweep_orphans`, per backend.
    pub swept: Vec<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkspaceRuns {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn Store>) -> WorkspaceRunsBuilder {
        WorkspaceRunsBuilder {
            store,
            backends: Vec::new(),
            config: EngineConfig::default(),
            recover: true,
            host_key: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
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

    fn backend(&self, name: &str) -> Result<&Arc<dyn SandboxBackend>> {
        self.inner
            .backends
            .get(name)
            .ok_or_else(|| Error::invalid("backend", format!("no backend named {name:?}")))
    }

    /// Creates a run in `awaiting_archive`.
    ///
    /// Refused with `Error::InvalidSpec`: an invalid spec, an unknown backend, and a
    /// template the backend does not offer (field `template`), so nothing is stored for a
    /// run that could never start.
    ///
    /// With an `idempotencyKey` already used, returns that run when the spec is the same
    /// request ([`RunRecord::same_request`]: every field, plain `env` values included, and
    /// the secret names), and `Error::IdempotencyKeyReused` when it differs. Secret values
    /// are never stored nor hashed, so a retry that differs only in them returns the first
    /// run.
    ///
    /// The spec's secret values stay in this engine's memory until [`start`](Self::start):
    /// the stored record keeps their names only, so the run must be started through this
    /// engine instance.
    pub async fn create(&self, spec: RunSpec) -> Result<RunRecord> {
        let limits = spec.validate(&self.inner.config.defaults, &self.inner.config.maxima)?;
        let backend = spec
            .backend
            .clone()
            .unwrap_or_else(|| self.inner.default_backend.clone());
        let chosen = self.backend(&backend)?;
        // Capabilities are data: a hard requirement the backend cannot enforce is refused
        // here, before anything is stored (`crate::capability`).
        if let Some(missing) =
            capability::unenforceable(&spec.requirements(), &chosen.capabilities())
        {
            return Err(Error::not_enforceable(&missing, backend));
        }
        self.inner
            .templates
            .check(&backend, chosen, &spec.template)
            .await?;
        let secrets = spec.secrets.clone();
        let id = RunId::new();
        let mut record =
            RunRecord::new(id.clone(), spec, backend, limits, self.inner.owner.clone());
        let created = self.inner.store.create_run(record.clone()).await?;
        match created {
            CreateOutcome::Existing(existing) if existing.same_request(&record) => Ok(existing),
            CreateOutcome::Existing(existing) => Err(Error::IdempotencyKeyReused {
                key: existing.spec.idempotency_key.unwrap_or_default(),
                run_id: existing.id.to_string(),
            }),
            CreateOutcome::Created(_) => {
                if !secrets.is_empty() {
                    lock(&self.inner.secrets).insert(id.clone(), secrets);
                }
                // The chain opens with what the client asked for (evidence v2), at the
                // record's creation time.
                let created = record.timestamps.created.unwrap_or_else(Timestamp::now);
                let spec = NewEvent {
                    at: created,
                    kind: EventKind::Spec {
                        spec: SpecRecord::of(&record),
                    },
                };
                let first = lifecycle::opened(&record, created);
                self.commit(&mut record, vec![spec, first], None).await?;
                Ok(record)
            }
        }
    }

    /// One run.
    pub async fn get(&self, id: &RunId) -> Result<RunRecord> {
        self.inner.store.get_run(id).await
    }

    /// Runs, newest first.
    pub async fn list(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        self.inner.store.list_runs(query).await
    }

    /// A bounded window of events with `seq > after_seq` (at most `limit`, capped at 1000).
    pub async fn list_events(
        &self,
        id: &RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner
            .store
            .list_events(id, after_seq, limit.clamp(1, 1000))
            .await
    }

    /// The Evidence Bundle; `Error::NotTerminal` before the run ended.
    pub async fn evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        self.inner.store.get_evidence(id).await
    }

    /// The DSSE envelope signed in the run's terminal commit, if the engine that ended it
    /// had a host key; `Error::NotTerminal` before the run ended.
    pub async fn evidence_envelope(&self, id: &RunId) -> Result<Option<DsseEnvelope>> {
        self.inner.store.get_evidence_envelope(id).await
    }

    /// The public half of the key that signs evidence in terminal commits, if any.
    pub fn host_public_key(&self) -> Option<HostPublicKey> {
        self.inner.host_key.as_ref().map(|k| k.public_key())
    }

    /// One artifact's record.
    pub async fn artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.inner.store.get_artifact(id).await
    }

    /// Starts a run in `archive_ready`: it moves to `queued` (and at once to `starting` when
    /// a concurrency slot is free) and its driver task takes over.
    pub async fn start(&self, id: &RunId) -> Result<RunRecord> {
        let run_lock = self.run_lock(id);
        let _guard = run_lock.lock().await;
        let mut record = self.get(id).await?;
        transition(record.status, Input::Start)?;
        let secrets = lock(&self.inner.secrets).remove(id);
        let secrets = match secrets {
            Some(secrets) => secrets,
            None if record.secret_names.is_empty() => BTreeMap::new(),
            None => {
                return Err(Error::invalid(
                    "secrets",
                    "the secret values of this run are held only in the memory of the engine \
                     instance that created it (they are never stored); start it there",
                ));
            }
        };
        let backend = self.backend(&record.backend)?.clone();
        record.owner = Some(self.inner.owner.clone());
        // With a slot free right now, `queued` and `starting` are committed together (both
        // status events are recorded; one store write instead of two).
        let permit = self.inner.slots.clone().try_acquire_owned().ok();
        if permit.is_some() {
            let now = Timestamp::now();
            let queued = lifecycle::advance(&mut record, Input::Start, now)?;
            let starting = lifecycle::advance(&mut record, Input::SlotAcquired, now)?;
            self.commit(&mut record, vec![queued, starting], None)
                .await?;
        } else {
            self.set_status(&mut record, Input::Start, Vec::new())
                .await?;
        }
        self.inner
            .metrics
            .runs_started
            .fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        lock(&self.inner.live).insert(id.clone(), LiveRun { cancel: cancel_tx });
        let engine = self.clone();
        let driven = record.clone();
        tokio::spawn(async move {
            let id = driven.id.clone();
            driver::Driver::new(engine.clone(), driven, backend, secrets, cancel_rx, permit)
                .run()
                .await;
            lock(&engine.inner.live).remove(&id);
        });
        Ok(record)
    }

    /// Cancels a run. Before `starting` it ends at once as `canceled`; while `starting` or
    /// `running` the kill ladder runs first. A run driven by another process is asked through
    /// the store. Canceling an ended run is `Error::InvalidTransition`.
    pub async fn cancel(&self, id: &RunId) -> Result<RunRecord> {
        let signaled = lock(&self.inner.live)
            .get(id)
            .map(|live| live.cancel.send(true))
            .is_some();
        if signaled {
            return self.get(id).await;
        }
        let run_lock = self.run_lock(id);
        let _guard = run_lock.lock().await;
        let mut record = self.get(id).await?;
        match record.status {
            RunStatus::AwaitingArchive | RunStatus::ArchiveReady => {
                self.terminate(&mut record, Input::Cancel, None, None, None, None)
                    .await?;
                self.discard_transfers(id).await;
                Ok(record)
            }
            s if s.is_terminal() => Err(Error::InvalidTransition {
                from: s,
                input: "cancel",
            }),
            // Driven elsewhere: the owner's driver polls for this flag.
            _ => self.inner.store.request_cancel(id).await,
        }
    }

    /// Deletes an ended run (retention): its record, its events, its Evidence Bundle, its
    /// artifact records and any transfer left, through [`Store::delete_run`]. **The
    /// evidence is gone**: nothing can verify the run afterwards; export it first
    /// (`evidence`, `list_events`) if it must be kept. The archive and artifact blobs no
    /// other run names are deleted by the next garbage collection after `blob_grace`. A
    /// run that has not ended is `Error::InvalidTransition` (cancel it first).
    pub async fn delete(&self, id: &RunId) -> Result<()> {
        let status = self.inner.store.get_run(id).await?.status;
        self.inner.store.delete_run(id).await?;
        self.inner.gauges.on_delete(status);
        lock(&self.inner.run_locks).remove(id);
        Ok(())
    }

    /// Waits until the run is terminal and returns its final record.
    ///
    /// It reads only the run record: woken by this engine's commits, and polling
    /// (`subscribe_poll_interval`) for runs driven by another process.
    pub async fn wait(&self, id: &RunId) -> Result<RunRecord> {
        let mut rx = self.watch_run(id);
        let poll = self.inner.config.subscribe_poll_interval;
        loop {
            let run = self.get(id).await?;
            if run.status.is_terminal() {
                drop(rx);
                self.release_watch(id);
                return Ok(run);
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The sender went away with the terminal commit: poll from now on.
                        tokio::time::sleep(poll).await;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Recovery: every unfinished run whose owner is gone ends `failed` / `host_restarted`
    /// with evidence; then every backend sweeps sandboxes of runs that are not live. Runs
    /// driven by a live process (this one or another) are left alone; runs are never
    /// resumed silently.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let live_here: Vec<RunId> = lock(&self.inner.live).keys().cloned().collect();
        for mut run in self.inner.store.list_unfinished().await? {
            let alive = live_here.contains(&run.id)
                || run
                    .owner
                    .as_ref()
                    .is_some_and(|o| o.instance == self.inner.instance || o.is_alive());
            if alive {
                report.live_elsewhere.push(run.id.clone());
                continue;
            }
            let failure = Failure::new(
                FailureKind::HostRestarted,
                format!(
                    "the process driving this run (pid {}) went away while it was {}",
                    run.owner.as_ref().map_or(0, |o| o.pid),
                    run.status
                ),
            );
            if let Some(sb) = run.sandbox.as_mut() {
                // The sweep below destroys it.
                sb.destroyed = true;
            }
            // What the host had recorded of the sandbox before it went away (the evidence
            // must say what the chain says).
            let (identity, isolation) = self.recorded_environment(&run.id).await?;
            match self
                .terminate(
                    &mut run,
                    Input::HostRestarted,
                    Some(failure),
                    identity,
                    isolation,
                    None,
                )
                .await
            {
                Ok(()) => report.reclaimed.push(run.id.clone()),
                // Another process reclaimed it first.
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (name, backend) in &self.inner.backends {
            let swept = backend.sweep_orphans(&report.live_elsewhere).await;
            observe::swept(name, &swept);
            match swept {
                Ok(swept) => report
                    .swept
                    .extend(swept.into_iter().map(|s| (name.clone(), s))),
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e.chain(), "sweep_orphans failed")
                }
            }
        }
        Ok(report)
    }

    /// The identity and isolation of the run's last `environment` event, if it has one.
    async fn recorded_environment(
        &self,
        id: &RunId,
    ) -> Result<(
        Option<crate::backend::TemplateIdentity>,
        Option<crate::backend::IsolationReport>,
    )> {
        let mut found = (None, None);
        let mut after = 0;
        loop {
            let batch = self.inner.store.list_events(id, after, 1000).await?;
            let Some(last) = batch.last() else {
                return Ok(found);
            };
            after = last.seq;
            for e in batch {
                if let EventKind::Environment {
                    identity,
                    isolation,
                } = e.kind
                {
                    found = (identity, Some(isolation));
                }
            }
        }
    }

    fn run_lock(&self, id: &RunId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.run_locks)
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// The one commit path of the engine: appends `events` and stores `record` (and the
    /// evidence with a terminal event), then wakes subscribers.
    async fn commit(
        &self,
        record: &mut RunRecord,
        events: Vec<NewEvent>,
        evidence: Option<EvidenceBundle>,
    ) -> Result<Vec<Event>> {
        self.commit_with(record, events, evidence, None).await
    }

    /// The terminal commit: events ending with `terminal`, the evidence and its envelope.
    async fn commit_terminal(
        &self,
        record: &mut RunRecord,
        events: Vec<NewEvent>,
        evidence: EvidenceBundle,
        envelope: Option<DsseEnvelope>,
    ) -> Result<Vec<Event>> {
        self.commit_with(record, events, Some(evidence), envelope)
            .await
    }

    async fn commit_with(
        &self,
        record: &mut RunRecord,
        events: Vec<NewEvent>,
        evidence: Option<EvidenceBundle>,
        envelope: Option<DsseEnvelope>,
    ) -> Result<Vec<Event>> {
        let sealed = self
            .inner
            .store
            .commit(
                &record.id,
                RunCommit {
                    expected_next_seq: record.next_seq,
                    events,
                    record: Some(record.clone()),
                    evidence,
                    envelope,
                },
            )
            .await?;
        self.inner
            .metrics
            .events_appended
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        self.inner.gauges.on_commit(record, &sealed);
        if let Some(last) = sealed.last() {
            record.next_seq = last.seq + 1;
            record.chain_head.clone_from(&last.hash);
            self.notify(&record.id, &sealed, record.status.is_terminal());
        }
        Ok(sealed)
    }

    /// A receiver of the run's commit notifications (see `notify`).
    fn watch_run(&self, id: &RunId) -> watch::Receiver<LiveBatch> {
        lock(&self.inner.watchers)
            .entry(id.clone())
            .or_insert_with(|| watch::channel(LiveBatch::default()).0)
            .subscribe()
    }

    /// Forgets the run's notification channel once no receiver is left, so waiting on or
    /// subscribing to ended runs leaves nothing behind.
    fn release_watch(&self, id: &RunId) {
        let mut w = lock(&self.inner.watchers);
        if w.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(id);
        }
    }

    fn notify(&self, id: &RunId, sealed: &[Event], terminal: bool) {
        let mut w = lock(&self.inner.watchers);
        let tx = if terminal {
            w.remove(id)
        } else {
            w.get(id).cloned()
        };
        if let Some(tx) = tx
            && tx.receiver_count() > 0
        {
            tx.send_replace(Arc::new(sealed.to_vec()));
        }
        if terminal {
            lock(&self.inner.run_locks).remove(id);
        }
    }

    /// `input` through the status gate ([`lifecycle::advance`]) + its `status` event (plus
    /// `extra` events before it) in one commit.
    async fn set_status(
        &self,
        record: &mut RunRecord,
        input: Input,
        mut extra: Vec<NewEvent>,
    ) -> Result<()> {
        extra.push(lifecycle::advance(record, input, Timestamp::now())?);
        self.commit(record, extra, None).await.map(|_| ())
    }

    /// Ends a run on `input`, which must take it to a terminal status
    /// (`Finalized(outcome)` from `finalizing`, `Cancel` before `starting`,
    /// `ArchiveTtlExpired`, `HostRestarted`; anything else is `InvalidTransition` and
    /// changes nothing): `status` event, then the `terminal` event, terminal record and
    /// evidence (and, with a host key, its signed envelope) in ONE commit.
    async fn terminate(
        &self,
        record: &mut RunRecord,
        input: Input,
        failure: Option<Failure>,
        identity: Option<crate::backend::TemplateIdentity>,
        isolation: Option<crate::backend::IsolationReport>,
        output: Option<OutputSummary>,
    ) -> Result<()> {
        let from = record.status;
        if !transition(from, input)?.is_terminal() {
            return Err(Error::InvalidTransition {
                from,
                input: input.name(),
            });
        }
        // An ended run never starts: forget its secrets (canceled, reclaimed or expired
        // before `start`).
        lock(&self.inner.secrets).remove(&record.id);
        let now = Timestamp::now();
        let status_event = lifecycle::advance(record, input, now)?;
        record.failure = failure;
        record.timestamps.terminal = Some(now);
        let duration_ms = record.timestamps.created.map_or(0, |c| now.millis_since(c));
        let v2 = record.evidence_v2;
        let terminal_with = |bundle_digest: Option<crate::ids::Sha256Digest>| NewEvent {
            at: now,
            kind: EventKind::Terminal {
                status: record.status,
                exit_code: record.exit_code,
                signal: record.signal,
                failure: record.failure.clone(),
                duration_ms,
                output: if v2 { output.clone() } else { None },
                sandbox: v2.then(|| EvidenceSandbox::of(record.sandbox.as_ref())),
                crownest_version: v2.then(|| env!("CARGO_PKG_VERSION").to_owned()),
                bundle_digest,
            },
        };
        // A run whose creation was interrupted before its first commit has no events: its
        // chain still opens with what was asked (evidence v2 derives the bundle from it).
        let mut events = Vec::new();
        if v2 && record.next_seq == 1 {
            events.push(NewEvent {
                at: record.timestamps.created.unwrap_or(now),
                kind: EventKind::Spec {
                    spec: SpecRecord::of(record),
                },
            });
        }
        events.push(status_event);
        // The evidence names the terminal event exactly as the store will seal it: the
        // chain is deterministic, so seal it here from the current head.
        let before = crate::event::seal_all(
            &record.chain_head,
            &record.id,
            record.next_seq,
            events.clone(),
        );
        let head = before
            .last()
            .map_or(record.chain_head.clone(), |e| e.hash.clone());
        let terminal_seq = record.next_seq + events.len() as u64;
        let seal_terminal = |event: NewEvent| seal(&head, &record.id, terminal_seq, event);
        let mut terminal = terminal_with(None);
        let mut evidence = EvidenceBundle::build(
            record,
            identity,
            isolation,
            output.clone(),
            seal_terminal(terminal.clone()),
        );
        if v2 {
            // Bind every field of the bundle to the chain: the terminal event carries the
            // digest of the bundle without the two fields that name the terminal event.
            terminal = terminal_with(Some(evidence.content_digest()));
            evidence.set_terminal(seal_terminal(terminal.clone()));
        }
        let envelope = match (&self.inner.host_key, v2) {
            (Some(key), true) => Some(evidence.to_dsse(key)),
            _ => None,
        };
        events.push(terminal);
        self.commit_terminal(record, events, evidence, envelope)
            .await
            .map(|_| ())
    }
}
