//! The driver: one task per started run, the only writer of its events.
//!
//! `queued` → (slot) → `starting`: create the sandbox, extract the archive →
//! `running`: stream output, heartbeats, deadline, cancel, kill ladder →
//! `finalizing`: collect artifacts, destroy or keep the sandbox →
//! terminal event + terminal record + evidence in one commit.
//!
//! The `running` phase (the command, its output, heartbeats, cancel, the kill ladder) is
//! `command.rs`.

mod artifacts;
mod command;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tracing::Instrument as _;

use super::WorkspaceRuns;
use crate::archive::ExtractPolicy;
use crate::backend::{
    ArchiveSource, Destroyed, IsolationReport, Sandbox, SandboxBackend, SandboxSpec,
    TemplateIdentity,
};
use crate::capability;
use crate::error::{Error, Result};
use crate::event::{ArchivePhase, EventKind, Failure, FailureKind, NewEvent};
use crate::evidence::OutputSummary;
use crate::lifecycle::{self, Input, Outcome};
use crate::run::{RunRecord, SandboxRecord};
use crate::secret::SecretValue;
use crate::status::RunStatus;
use crate::time::Timestamp;

/// How the execution phase ended, before artifacts are considered.
struct Ending {
    outcome: Outcome,
    failure: Option<Failure>,
}

impl Ending {
    fn failed(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            failure: Some(Failure::new(kind, message)),
        }
    }

    fn canceled() -> Self {
        Self {
            outcome: Outcome::Canceled,
            failure: None,
        }
    }
}

pub(super) struct Driver {
    engine: WorkspaceRuns,
    record: RunRecord,
    backend: Arc<dyn SandboxBackend>,
    /// The run's secret values (from the engine's memory; never stored).
    secrets: BTreeMap<String, SecretValue>,
    cancel: watch::Receiver<bool>,
    identity: Option<TemplateIdentity>,
    /// The concurrency slot, when `start` already took it (the run is then `starting`).
    permit: Option<OwnedSemaphorePermit>,
    /// Events that go out with the next commit (saves a store write, i.e. an fsync, for
    /// events nobody waits on, such as the final extraction progress).
    deferred: Vec<NewEvent>,
    isolation: Option<IsolationReport>,
    /// The command's output totals and digests, once it ran.
    output: Option<OutputSummary>,
}

impl Driver {
    pub(super) fn new(
        engine: WorkspaceRuns,
        record: RunRecord,
        backend: Arc<dyn SandboxBackend>,
        secrets: BTreeMap<String, SecretValue>,
        cancel: watch::Receiver<bool>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            engine,
            record,
            backend,
            secrets,
            cancel,
            permit,
            identity: None,
            deferred: Vec::new(),
            isolation: None,
            output: None,
        }
    }

    /// Drives the run to its terminal event. Never returns early without one unless the
    /// store itself fails (then recovery ends the run later).
    pub(super) async fn run(self) {
        let span = super::observe::run_span(&self.record.id);
        self.drive_to_end().instrument(span).await;
    }

    async fn drive_to_end(mut self) {
        if let Err(e) = self.drive().await {
            tracing::error!(run = %self.record.id, error = %e.chain(), "driver failed");
            // Last resort: try to end the run so it is not left dangling.
            if !self.record.status.is_terminal()
                && let Ok(mut fresh) = self.engine.get(&self.record.id).await
                && !fresh.status.is_terminal()
            {
                if fresh.status == RunStatus::Running || fresh.status == RunStatus::Starting {
                    let _ = self
                        .engine
                        .set_status(&mut fresh, Input::CommandEnded, Vec::new())
                        .await;
                }
                // From `finalizing` the run ends through the table like any other; from
                // anywhere else (still `queued`) its driver is gone, as after a restart.
                let input = if fresh.status == RunStatus::Finalizing {
                    Input::Finalized(Outcome::Failed)
                } else {
                    Input::HostRestarted
                };
                let failure = Failure::new(
                    FailureKind::SandboxError,
                    format!("engine error: {}", e.chain()),
                );
                // After an engine error the driver's memory may be ahead of the chain (an
                // `environment` or output commit that failed): take what the store holds,
                // and claim no output totals (as recovery does).
                let (identity, isolation) = self
                    .engine
                    .recorded_environment(&fresh.id)
                    .await
                    .unwrap_or((None, None));
                let _ = self
                    .engine
                    .terminate(&mut fresh, input, Some(failure), identity, isolation, None)
                    .await;
            }
        }
    }

    fn cancel_requested(&self) -> bool {
        *self.cancel.borrow()
    }

    async fn commit(&mut self, events: Vec<NewEvent>) -> Result<()> {
        let mut all = std::mem::take(&mut self.deferred);
        all.extend(events);
        self.engine
            .commit(&mut self.record, all, None)
            .await
            .map(|_| ())
    }

    async fn status(&mut self, input: Input, extra: Vec<NewEvent>) -> Result<()> {
        let mut all = std::mem::take(&mut self.deferred);
        all.extend(extra);
        self.engine.set_status(&mut self.record, input, all).await
    }

    async fn drive(&mut self) -> Result<()> {
        // queued → starting, once a slot is free (or canceled while waiting); `start`
        // already took one when it was free at once.
        let _permit = match self.permit.take() {
            Some(permit) => permit,
            None => {
                let Some(permit) = self.acquire_slot().await? else {
                    let mut rec = self.record.clone();
                    self.engine
                        .terminate(&mut rec, Input::Cancel, None, None, None, None)
                        .await?;
                    self.record = rec;
                    return Ok(());
                };
                self.status(Input::SlotAcquired, Vec::new()).await?;
                permit
            }
        };

        let spec = SandboxSpec {
            run_id: self.record.id.clone(),
            instance: self.engine.instance().to_owned(),
            owner: self.engine.inner.owner.clone(),
            template: self.record.spec.template.clone(),
            limits: self.record.limits,
            network: self.record.spec.network,
        };
        let sandbox = match self.backend.create(&spec).await {
            Ok(s) => s,
            Err(e) => {
                let ending = match &e {
                    Error::InvalidSpec { .. } => {
                        Ending::failed(FailureKind::SpawnFailed, e.to_string())
                    }
                    _ => Ending::failed(FailureKind::SandboxError, e.chain()),
                };
                return self.finalize(None, ending).await;
            }
        };
        self.identity = Some(sandbox.identity());
        self.isolation = Some(self.enforced(sandbox.isolation()));
        // What the host uses, in the chain (goes out with the next commit).
        self.deferred.push(self.environment_event());
        self.record.sandbox = Some(SandboxRecord {
            id: sandbox.id().to_owned(),
            kept: false,
            keep_until: None,
            destroyed: false,
            removal_pending: false,
        });

        if let Err(e) = self.materialize(sandbox.as_ref()).await {
            let ending = match &e {
                Error::ArchiveRejected { .. } => {
                    Ending::failed(FailureKind::ArchiveRejected, e.to_string())
                }
                _ => Ending::failed(FailureKind::SandboxError, e.chain()),
            };
            return self.finalize(Some(sandbox), ending).await;
        }
        if self.cancel_requested() {
            return self.finalize(Some(sandbox), Ending::canceled()).await;
        }
        let ending = self.execute(sandbox.as_ref()).await?;
        self.finalize(Some(sandbox), ending).await
    }

    async fn acquire_slot(&mut self) -> Result<Option<OwnedSemaphorePermit>> {
        let slots = self.engine.inner.slots.clone();
        let poll = self.engine.inner.config.cancel_poll_interval;
        let acquire = slots.acquire_owned();
        tokio::pin!(acquire);
        loop {
            if self.cancel_requested() {
                return Ok(None);
            }
            tokio::select! {
                permit = &mut acquire => {
                    return permit.map(Some).map_err(|_| Error::ShuttingDown);
                }
                _ = self.cancel.changed() => {}
                _ = tokio::time::sleep(poll) => {
                    if self.engine.get(&self.record.id).await?.stop_requested() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn materialize(&mut self, sandbox: &dyn Sandbox) -> Result<()> {
        let archive = self
            .record
            .archive
            .clone()
            .ok_or_else(|| Error::invalid("archive", "run has no verified archive"))?;
        // The tree prepared at upload (one pass), or, when there is none (the backend takes
        // none, the upload went through another process, or attach-by-digest found it
        // stored before), the stored archive.
        let source = match self.engine.take_prepared(&self.record.id) {
            Some(tree) => ArchiveSource::Prepared(tree),
            None => ArchiveSource::Archive(self.engine.store().open_blob(&archive.sha256).await?),
        };
        let policy = ExtractPolicy::from_limits(&self.record.limits);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let interval = self.engine.config().progress_interval;
        let last = std::sync::Mutex::new(Instant::now() - interval);
        let progress = move |p: crate::archive::ExtractProgress| {
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            if l.elapsed() >= interval {
                *l = Instant::now();
                let _ = tx.send(p);
            }
        };
        let began = Instant::now();
        let fut = sandbox.materialize(source, &policy, &progress);
        tokio::pin!(fut);
        let total = archive.size_bytes;
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                Some(p) = rx.recv() => {
                    self.commit(vec![NewEvent::now(EventKind::ArchiveProgress {
                        phase: ArchivePhase::Extracting,
                        bytes_done: p.bytes_done,
                        bytes_total: total,
                        entries: p.entries,
                    })]).await?;
                }
            }
        };
        super::observe::extraction(&self.record.backend, began.elapsed(), result.is_ok());
        let summary = result?;
        // Goes out with the `running` status (or whatever is committed next).
        self.deferred
            .push(NewEvent::now(EventKind::ArchiveProgress {
                phase: ArchivePhase::Extracting,
                bytes_done: total,
                bytes_total: total,
                entries: summary.entries,
            }));
        Ok(())
    }

    /// `finalizing`: artifacts, destroy or keep, then the terminal commit.
    async fn finalize(
        &mut self,
        sandbox: Option<Box<dyn Sandbox>>,
        mut ending: Ending,
    ) -> Result<()> {
        let input = if ending.outcome == Outcome::Canceled {
            Input::Cancel
        } else {
            Input::CommandEnded
        };
        if self.record.spec.artifacts.is_empty() && self.record.spec.keep_sandbox.is_none() {
            // Nothing to collect or keep: `finalizing` lasts as long as the sandbox's
            // removal, and its status event goes out with the next commit, the terminal
            // one unless the removal reports an error first (one store write instead of
            // two, as `start` commits `queued` and `starting` together).
            let finalizing = lifecycle::advance(&mut self.record, input, Timestamp::now())?;
            self.deferred.push(finalizing);
        } else {
            self.status(input, Vec::new()).await?;
        }
        let budget = Duration::from_millis(self.record.limits.finalization_budget_ms);
        let started = tokio::time::Instant::now();

        if let Some(sandbox) = &sandbox {
            let materialized = !matches!(
                ending.failure.as_ref().map(|f| f.kind),
                Some(FailureKind::ArchiveRejected | FailureKind::SandboxError)
            ) || self.record.timestamps.command_started.is_some();
            let collect = self.collect_artifacts(sandbox.as_ref(), materialized);
            match tokio::time::timeout(budget, collect).await {
                Ok(r) => r?,
                Err(_) => {
                    self.commit(vec![NewEvent::now(EventKind::Error {
                        code: "finalization_budget".into(),
                        message: format!(
                            "artifact collection exceeded the {} ms budget",
                            budget.as_millis()
                        ),
                    })])
                    .await?;
                }
            }
        }
        if ending.outcome == Outcome::Succeeded
            && let Some(missing) = self.missing_required()
        {
            ending = Ending::failed(
                FailureKind::MissingRequiredArtifact,
                format!("required artifact {missing:?} was not collected"),
            );
        }

        if let Some(sandbox) = sandbox {
            let remaining = budget
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(5));
            self.release_sandbox(sandbox, remaining).await?;
        }
        let leading = std::mem::take(&mut self.deferred);
        let mut rec = self.record.clone();
        self.engine
            .terminate_after(
                &mut rec,
                leading,
                Input::Finalized(ending.outcome),
                super::commit::TerminalFacts {
                    failure: ending.failure,
                    identity: self.identity.clone(),
                    isolation: self.isolation.clone(),
                    output: self.output.clone(),
                },
            )
            .await?;
        self.record = rec;
        Ok(())
    }

    /// A sandbox's report with what the run asked for and did not get (`notEnforced`).
    fn enforced(&self, mut report: IsolationReport) -> IsolationReport {
        report.not_enforced = capability::not_enforced(&self.record.spec.requirements(), &report);
        report
    }

    /// The `environment` event: what the host uses for this run right now.
    fn environment_event(&self) -> NewEvent {
        NewEvent::now(EventKind::Environment {
            identity: self.identity.clone(),
            // Always set before the event is made (right after `create`).
            isolation: self.isolation.clone().unwrap_or_default(),
        })
    }

    /// Destroys the sandbox, or keeps it until its TTL (a timer task destroys it then; if
    /// this process dies first, the next recovery's `sweep_orphans` does).
    async fn release_sandbox(&mut self, sandbox: Box<dyn Sandbox>, budget: Duration) -> Result<()> {
        let already = self.record.sandbox.as_ref().is_some_and(|s| s.destroyed);
        if let Some(keep) = self.record.spec.keep_sandbox
            && !already
        {
            let until = Timestamp::now().plus_millis(keep.ttl_ms);
            match sandbox.keep(until).await {
                Ok(()) => {
                    if let Some(sb) = self.record.sandbox.as_mut() {
                        sb.kept = true;
                        sb.keep_until = Some(until);
                    }
                    let sandbox: Arc<dyn Sandbox> = Arc::from(sandbox);
                    let ttl = Duration::from_millis(keep.ttl_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(ttl).await;
                        if let Err(e) = sandbox.destroy().await {
                            tracing::warn!(sandbox = sandbox.id(), error = %e.chain(), "destroying a kept sandbox failed");
                        }
                    });
                    return Ok(());
                }
                Err(e) => {
                    self.commit(vec![NewEvent::now(EventKind::Error {
                        code: "keep_failed".into(),
                        message: format!(
                            "keeping the sandbox failed, destroying it: {}",
                            e.chain()
                        ),
                    })])
                    .await?;
                }
            }
        }
        match tokio::time::timeout(budget, sandbox.destroy()).await {
            Ok(Ok(outcome)) => {
                if let Some(sb) = self.record.sandbox.as_mut() {
                    sb.destroyed = true;
                    sb.removal_pending = outcome == Destroyed::RemovalPending;
                }
            }
            Ok(Err(e)) => {
                self.commit(vec![NewEvent::now(EventKind::Error {
                    code: "cleanup_failed".into(),
                    message: e.chain(),
                })])
                .await?;
            }
            Err(_) => {
                self.commit(vec![NewEvent::now(EventKind::Error {
                    code: "cleanup_failed".into(),
                    message: format!(
                        "destroying the sandbox took longer than {} ms",
                        budget.as_millis()
                    ),
                })])
                .await?;
            }
        }
        Ok(())
    }
}
