//! Requests that change a run: [`WorkspaceRuns::create`], [`WorkspaceRuns::start`],
//! [`WorkspaceRuns::cancel`] and [`WorkspaceRuns::delete`].

use std::collections::BTreeMap;

use super::{WorkspaceRuns, lock};
use crate::capability;
use crate::error::{Error, Result};
use crate::event::{EventKind, NewEvent};
use crate::evidence::SpecRecord;
use crate::ids::RunId;
use crate::lifecycle::{self, Input, transition};
use crate::run::RunRecord;
use crate::spec::RunSpec;
use crate::status::RunStatus;
use crate::store::{CreateOutcome, RunCommit};
use crate::time::Timestamp;

impl WorkspaceRuns {
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
        // The chain opens with what the client asked for (evidence v2), at the record's
        // creation time; stored with the run in one write where the store can.
        let created = record.timestamps.created.unwrap_or_else(Timestamp::now);
        let spec = NewEvent {
            at: created,
            kind: EventKind::Spec {
                spec: SpecRecord::of(&record),
            },
        };
        let first = RunCommit {
            expected_next_seq: record.next_seq,
            events: vec![spec, lifecycle::opened(&record, created)],
            record: Some(record.clone()),
            evidence: None,
            envelope: None,
        };
        let (outcome, sealed) = self
            .inner
            .store
            .create_run_with(record.clone(), first)
            .await?;
        match outcome {
            CreateOutcome::Existing(existing) if existing.same_request(&record) => Ok(existing),
            CreateOutcome::Existing(existing) => Err(Error::IdempotencyKeyReused {
                key: existing.spec.idempotency_key.unwrap_or_default(),
                run_id: existing.id.to_string(),
            }),
            CreateOutcome::Created(_) => {
                if !secrets.is_empty() {
                    lock(&self.inner.secrets).insert(id.clone(), secrets);
                }
                self.committed(&mut record, &sealed);
                Ok(record)
            }
        }
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
        let mut permit = self.inner.slots.clone().try_acquire_owned().ok();
        let queues = self.inner.shares_queue() && self.inner.config.claim_from_queue;
        if permit.is_none() && queues {
            // The claimer may hold a slot only to look for a queued run: once it looked,
            // the slot is either free again or driving a run.
            let _looked = self.inner.claim_probe.lock().await;
            permit = self.inner.slots.clone().try_acquire_owned().ok();
        }
        if permit.is_some() {
            let now = Timestamp::now();
            let queued = lifecycle::advance(&mut record, Input::Start, now)?;
            let starting = lifecycle::advance(&mut record, Input::SlotAcquired, now)?;
            self.commit(&mut record, vec![queued, starting], None)
                .await?;
        } else if queues && secrets.is_empty() {
            // No slot here: the run waits in the shared queue, owned by nobody, for the
            // first engine with a free slot and its backend (this one included). A run with
            // secrets cannot: their values live only in this engine's memory.
            record.owner = None;
            self.set_status(&mut record, Input::Start, Vec::new())
                .await?;
            self.inner.claim_wake.notify_one();
            return Ok(record);
        } else {
            self.set_status(&mut record, Input::Start, Vec::new())
                .await?;
        }
        self.spawn_driver(record.clone(), backend, secrets, permit);
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
            // Waiting in the shared queue, owned by nobody: ended here, unless an engine
            // claims it first (its driver then sees the request).
            RunStatus::Queued if record.owner.is_none() => {
                match self
                    .terminate(&mut record, Input::Cancel, None, None, None, None)
                    .await
                {
                    Ok(()) => Ok(record),
                    Err(Error::Conflict { .. }) => self.inner.store.request_cancel(id).await,
                    Err(e) => Err(e),
                }
            }
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
    /// artifact records and any transfer left, through
    /// [`Store::delete_run`](crate::store::Store::delete_run). **The evidence is gone**:
    /// nothing can verify the run afterwards; export it first
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
}
