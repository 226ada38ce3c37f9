//! The driver: one task per started run, the only writer of its events.
//!
//! `queued` → (slot) → `starting`: create the sandbox, extract the archive →
//! `running`: stream output, heartbeats, deadline, cancel, kill ladder →
//! `finalizing`: collect artifacts, destroy or keep the sandbox →
//! terminal event + terminal record + evidence in one commit.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::sleep_until;

use super::WorkspaceRuns;
use super::sink::{EngineSink, OutputChunker, SinkMsg};
use crate::archive::ExtractPolicy;
use crate::artifact::CollectedArtifact;
use crate::backend::{
    Destroyed, ExecOutcome, ExecRequest, ExitStatus, IsolationReport, KillSignal, Sandbox,
    SandboxBackend, SandboxSpec, TemplateIdentity,
};
use crate::capability;
use crate::error::{Error, Result};
use crate::event::{
    ArchivePhase, ArtifactErrorReason, EventKind, Failure, FailureKind, KillReason, NewEvent,
};
use crate::evidence::OutputSummary;
use crate::ids::ArtifactId;
use crate::run::{Artifact, ArtifactErrorRecord, RunRecord, SandboxRecord};
use crate::secret::SecretValue;
use crate::status::{Input, Outcome, RunStatus, transition};
use crate::store::BlobExpect;
use crate::time::Timestamp;

/// Most output events in one commit (and gathered while one is in flight): with chunks of
/// at most 64 KiB, about 4 MiB of output (5.3 MiB as base64) per store write.
const MAX_OUTPUT_BATCH: usize = 64;

/// A commit of output events running behind the command; yields the run's new
/// `(next_seq, chain_head)`.
type OutputCommit = Pin<Box<dyn Future<Output = Result<(u64, String)>> + Send>>;

/// Output events of the running command on their way to the store.
#[derive(Default)]
struct OutputCommits {
    /// The commit in flight, if any.
    in_flight: Option<OutputCommit>,
    /// Events received while it was in flight: the next commit.
    pending: Vec<NewEvent>,
}

/// Completes the commit in flight (never resolves without one: the caller guards it).
async fn in_flight(commit: &mut Option<OutputCommit>) -> Result<(u64, String)> {
    match commit {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

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
    pub(super) async fn run(mut self) {
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
                        .set_status(&mut fresh, RunStatus::Finalizing, Vec::new())
                        .await;
                }
                let failure = Failure::new(
                    FailureKind::SandboxError,
                    format!("engine error: {}", e.chain()),
                );
                let _ = self
                    .engine
                    .terminate(
                        &mut fresh,
                        Outcome::Failed,
                        Some(failure),
                        self.identity.clone(),
                        self.isolation.clone(),
                        self.output.clone(),
                    )
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

    /// Starts committing the gathered output events, unless a commit is in flight (then
    /// they go with the next one, when it completes).
    fn start_output_commit(&self, output: &mut OutputCommits) {
        if output.in_flight.is_some() || output.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut output.pending);
        let engine = self.engine.clone();
        let mut record = self.record.clone();
        output.in_flight = Some(Box::pin(async move {
            let result = engine.commit(&mut record, events, None).await.map(|_| ());
            result.map(|()| (record.next_seq, record.chain_head))
        }));
    }

    /// Applies a completed output commit to the driver's record.
    fn committed(&mut self, done: Result<(u64, String)>) -> Result<()> {
        let (next_seq, chain_head) = done?;
        self.record.next_seq = next_seq;
        self.record.chain_head = chain_head;
        Ok(())
    }

    /// Commits every output event received so far (before any other event is committed,
    /// so the log keeps the order in which things happened).
    async fn flush_output(&mut self, output: &mut OutputCommits) -> Result<()> {
        if let Some(f) = output.in_flight.take() {
            self.committed(f.await)?;
        }
        if !output.pending.is_empty() {
            let events = std::mem::take(&mut output.pending);
            self.commit(events).await?;
        }
        Ok(())
    }

    async fn status(&mut self, input: Input, extra: Vec<NewEvent>) -> Result<()> {
        let to = transition(self.record.status, input)?;
        let mut all = std::mem::take(&mut self.deferred);
        all.extend(extra);
        self.engine.set_status(&mut self.record, to, all).await
    }

    async fn drive(&mut self) -> Result<()> {
        // queued → starting, once a slot is free (or canceled while waiting); `start`
        // already took one when it was free at once.
        let _permit = match self.permit.take() {
            Some(permit) => permit,
            None => {
                let Some(permit) = self.acquire_slot().await? else {
                    let mut rec = self.record.clone();
                    transition(rec.status, Input::Cancel)?;
                    self.engine
                        .terminate(&mut rec, Outcome::Canceled, None, None, None, None)
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
                    if self.engine.get(&self.record.id).await?.cancel_requested {
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
        let reader = self.engine.store().open_blob(&archive.sha256).await?;
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
        let fut = sandbox.materialize(reader, &policy, &progress);
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

    /// Runs the command: output, heartbeats, deadline, cancel and the kill ladder.
    async fn execute(&mut self, sandbox: &dyn Sandbox) -> Result<Ending> {
        let cfg = self.engine.config().clone();
        let limits = self.record.limits;
        // Only secret values are masked: plain env values are provenance, and masking them
        // would garble ordinary output (`CI=true` turns every "true" into `***`).
        let chunker = OutputChunker::new(
            limits.output_bytes_per_stream,
            self.secrets.values().map(|v| v.expose().to_owned()),
        );
        let (tx, mut rx) = mpsc::channel::<SinkMsg>(16);
        let sink = EngineSink {
            chunker: &chunker,
            tx,
        };
        let request = ExecRequest {
            argv: self.record.spec.command.clone(),
            cwd: self.record.spec.cwd.clone(),
            env: self.record.spec.env.clone(),
            secrets: self.secrets.clone(),
        };
        let mut exec = Box::pin(sandbox.exec(&request, &sink));

        let begun = tokio::time::Instant::now();
        let deadline = begun + Duration::from_millis(limits.timeout_ms);
        let mut heartbeat =
            tokio::time::interval_at(begun + cfg.heartbeat_interval, cfg.heartbeat_interval);
        let mut cancel_poll = tokio::time::interval(cfg.cancel_poll_interval);
        // (reason, next rung, when)
        let mut ladder: Option<(KillReason, u8, tokio::time::Instant)> = None;
        let mut exec_result: Option<Result<ExecOutcome>> = None;
        let mut destroyed_by_ladder = false;

        // Output commits run behind the command: one commit is in flight while the
        // next batch gathers, and `exec` (which reads the pipes) keeps being polled
        // meanwhile. Awaiting each commit inside this loop would stop reading output for
        // the length of every store write (an fsync on disk), one 64 KiB read per commit.
        let mut output = OutputCommits::default();

        while exec_result.is_none() {
            let ladder_at = ladder.map_or(deadline, |(_, _, at)| at);
            tokio::select! {
                biased;
                done = in_flight(&mut output.in_flight), if output.in_flight.is_some() => {
                    output.in_flight = None;
                    self.committed(done)?;
                    self.start_output_commit(&mut output);
                }
                msg = rx.recv(), if output.pending.len() < MAX_OUTPUT_BATCH => match msg {
                    Some(SinkMsg::Started) => {
                        self.flush_output(&mut output).await?;
                        self.status(Input::CommandStarted, Vec::new()).await?;
                    }
                    Some(SinkMsg::Events(events)) => {
                        // Coalesce what is already queued into the next commit.
                        output.pending.extend(events);
                        while output.pending.len() < MAX_OUTPUT_BATCH {
                            match rx.try_recv() {
                                Ok(SinkMsg::Events(more)) => output.pending.extend(more),
                                Ok(SinkMsg::Started) => {
                                    self.flush_output(&mut output).await?;
                                    self.status(Input::CommandStarted, Vec::new()).await?;
                                }
                                Err(_) => break,
                            }
                        }
                        self.start_output_commit(&mut output);
                    }
                    None => {}
                },
                r = &mut exec => exec_result = Some(r),
                _ = sleep_until(ladder_at) => {
                    self.flush_output(&mut output).await?;
                    let (reason, rung) = ladder.map_or((KillReason::Timeout, 0), |(r, n, _)| (r, n));
                    match self.kill_rung(sandbox, reason, rung, &cfg, limits.kill_grace_ms).await? {
                        Some(next_at) => ladder = Some((reason, rung + 1, next_at)),
                        None => {
                            destroyed_by_ladder = true;
                            exec_result = Some(Ok(ExecOutcome::new(ExitStatus::Signaled(9))));
                        }
                    }
                }
                _ = self.cancel.changed(), if ladder.is_none() => {
                    if self.cancel_requested() {
                        self.flush_output(&mut output).await?;
                        let next = self.kill_rung(sandbox, KillReason::Cancel, 0, &cfg, limits.kill_grace_ms).await?;
                        ladder = next.map(|at| (KillReason::Cancel, 1, at));
                    }
                }
                _ = cancel_poll.tick(), if ladder.is_none() => {
                    if self.engine.get(&self.record.id).await?.cancel_requested {
                        self.flush_output(&mut output).await?;
                        let next = self.kill_rung(sandbox, KillReason::Cancel, 0, &cfg, limits.kill_grace_ms).await?;
                        ladder = next.map(|at| (KillReason::Cancel, 1, at));
                    }
                }
                _ = heartbeat.tick(), if self.record.status == RunStatus::Running => {
                    self.flush_output(&mut output).await?;
                    self.commit(vec![NewEvent::now(EventKind::Heartbeat {})]).await?;
                }
            }
        }
        drop(exec);
        drop(sink);
        // Wait for the commit in flight; what was gathered but not committed goes first.
        if let Some(f) = output.in_flight.take() {
            self.committed(f.await)?;
        }
        // Drain what the sink produced before the command ended, then flush held bytes.
        let mut tail = std::mem::take(&mut output.pending);
        while let Some(msg) = rx.recv().await {
            if let SinkMsg::Events(events) = msg {
                tail.extend(events);
            }
        }
        tail.extend(chunker.finish());
        for (stream, dropped) in chunker.dropped() {
            if dropped > 0 {
                tail.push(NewEvent::now(EventKind::OutputTruncated {
                    stream,
                    bytes_dropped: dropped,
                }));
            }
        }
        while !tail.is_empty() {
            let rest = tail.split_off(tail.len().min(MAX_OUTPUT_BATCH));
            self.commit(std::mem::replace(&mut tail, rest)).await?;
        }
        self.output = Some(chunker.summary());
        if destroyed_by_ladder && let Some(sb) = self.record.sandbox.as_mut() {
            sb.destroyed = true;
        }

        let reason = ladder.map(|(r, _, _)| r);
        let outcome = match exec_result {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Ok(Ending::failed(FailureKind::SandboxError, e.chain())),
            None => {
                return Ok(Ending::failed(
                    FailureKind::SandboxError,
                    "exec did not finish",
                ));
            }
        };
        // What the sandbox enforced may have changed while spawning (e.g. a containment
        // fallback): record what was true for this command.
        let before = self.isolation.clone();
        self.isolation = Some(self.enforced(sandbox.isolation()));
        let mut events = Vec::new();
        if !outcome.survivors.is_empty() {
            let message = format!(
                "{} process(es) survived the final kill: {}",
                outcome.survivors.len(),
                outcome.survivors.join(", ")
            );
            if let Some(iso) = self.isolation.as_mut() {
                iso.details
                    .insert("survivors".into(), outcome.survivors.join(", "));
            }
            events.push(NewEvent::now(EventKind::Error {
                code: "survivors".into(),
                message,
            }));
        }
        if self.isolation != before {
            events.push(self.environment_event());
        }
        if !events.is_empty() {
            self.commit(events).await?;
        }
        match &outcome.status {
            ExitStatus::Exited(code) => self.record.exit_code = Some(*code),
            ExitStatus::Signaled(sig) => self.record.signal = Some(*sig),
            _ => {}
        }
        Ok(match (reason, outcome.status) {
            (Some(KillReason::Cancel), _) => Ending::canceled(),
            (Some(KillReason::Timeout), _) => Ending::failed(
                FailureKind::TimedOut,
                format!(
                    "the command ran past its {} ms deadline and was killed",
                    limits.timeout_ms
                ),
            ),
            (_, ExitStatus::Exited(0)) => Ending {
                outcome: Outcome::Succeeded,
                failure: None,
            },
            (_, ExitStatus::Exited(code)) => Ending::failed(
                FailureKind::ExitNonzero,
                format!("the command exited with code {code}"),
            ),
            (_, ExitStatus::Signaled(sig)) => Ending::failed(
                FailureKind::Signaled,
                format!("the command was killed by signal {sig}"),
            ),
            (_, ExitStatus::SpawnFailed(msg)) => Ending::failed(FailureKind::SpawnFailed, msg),
            (_, ExitStatus::LimitExceeded(msg)) => Ending::failed(FailureKind::LimitExceeded, msg),
        })
    }

    /// One rung of the kill ladder: 0 = SIGTERM, 1 = SIGKILL, 2 = destroy. Returns when the
    /// next rung is due, or `None` after destroy.
    async fn kill_rung(
        &mut self,
        sandbox: &dyn Sandbox,
        reason: KillReason,
        rung: u8,
        cfg: &super::EngineConfig,
        grace_ms: u64,
    ) -> Result<Option<tokio::time::Instant>> {
        let now = tokio::time::Instant::now();
        let (signal, next) = match rung {
            0 => (
                Some(KillSignal::Term),
                Some(now + Duration::from_millis(grace_ms)),
            ),
            1 => (Some(KillSignal::Kill), Some(now + cfg.kill_confirm_timeout)),
            _ => (None, None),
        };
        let event = NewEvent::now(EventKind::Kill {
            signal: signal.map(|s| s.name().to_owned()),
            action: signal.is_none().then(|| "destroy".to_owned()),
            reason,
        });
        self.commit(vec![event]).await?;
        let result = match signal {
            Some(sig) => sandbox.signal(sig).await,
            None => sandbox.destroy().await.map(|_| ()),
        };
        if let Err(e) = result {
            self.commit(vec![NewEvent::now(EventKind::Error {
                code: "kill_failed".into(),
                message: e.chain(),
            })])
            .await?;
        }
        Ok(next)
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
        self.status(input, Vec::new()).await?;
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
        let mut rec = self.record.clone();
        self.engine
            .terminate(
                &mut rec,
                ending.outcome,
                ending.failure,
                self.identity.clone(),
                self.isolation.clone(),
                self.output.clone(),
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

    fn missing_required(&self) -> Option<String> {
        self.record
            .spec
            .artifacts
            .iter()
            .filter(|a| a.required)
            .find(|a| !self.record.artifacts.iter().any(|c| c.path == a.path))
            .map(|a| a.path.clone())
    }

    async fn collect_artifacts(&mut self, sandbox: &dyn Sandbox, materialized: bool) -> Result<()> {
        let requests = self.record.spec.artifacts.clone();
        let mut total: u64 = 0;
        for req in requests {
            let remaining = self
                .record
                .limits
                .artifact_bytes_total
                .saturating_sub(total);
            let max = self.record.limits.artifact_bytes_each.min(remaining);
            let result = if materialized {
                sandbox.collect_artifact(&req.path, max).await
            } else {
                Err(crate::artifact::ArtifactFailure::new(
                    ArtifactErrorReason::NotFound,
                    "the workspace was never materialized",
                ))
            };
            let stored = match result {
                Ok(collected) => self.store_artifact(&req.path, collected, max).await,
                Err(f) => Err(f),
            };
            match stored {
                Ok(artifact) => {
                    total += artifact.size_bytes;
                    let event = NewEvent::now(EventKind::ArtifactCollected {
                        artifact_id: artifact.artifact_id.clone(),
                        path: artifact.path.clone(),
                        size_bytes: artifact.size_bytes,
                        sha256: artifact.sha256.clone(),
                        mode: artifact.mode,
                        skipped: artifact.skipped.clone(),
                    });
                    self.record.artifacts.push(artifact);
                    self.commit(vec![event]).await?;
                }
                Err(f) => {
                    let event = NewEvent::now(EventKind::ArtifactError {
                        path: req.path.clone(),
                        reason: f.reason,
                        message: f.message.clone(),
                    });
                    self.record.artifact_errors.push(ArtifactErrorRecord {
                        path: req.path.clone(),
                        reason: f.reason,
                        message: f.message,
                    });
                    self.commit(vec![event]).await?;
                }
            }
        }
        Ok(())
    }

    async fn store_artifact(
        &self,
        path: &str,
        collected: CollectedArtifact,
        max: u64,
    ) -> std::result::Result<Artifact, crate::artifact::ArtifactFailure> {
        use crate::artifact::ArtifactFailure;
        if collected.size_bytes > max {
            return Err(ArtifactFailure::new(
                ArtifactErrorReason::TooLarge,
                format!(
                    "{path:?} is {} bytes, over the {max} byte limit",
                    collected.size_bytes
                ),
            ));
        }
        let stream =
            super::intake::reader_stream(Box::new(std::io::Read::take(collected.reader, max + 1)));
        let expect = BlobExpect {
            descriptor: None,
            max_bytes: max,
        };
        let hashed = stream.boxed();
        let info = self
            .engine
            .store()
            .put_blob(hashed, expect)
            .await
            .map_err(|e| match e {
                Error::ArchiveRejected { .. } => ArtifactFailure::new(
                    ArtifactErrorReason::TooLarge,
                    format!("{path:?} grew over the {max} byte limit while being read"),
                ),
                e => ArtifactFailure::new(
                    ArtifactErrorReason::NotFound,
                    format!("storing {path:?} failed: {}", e.chain()),
                ),
            })?;
        Ok(Artifact {
            artifact_id: ArtifactId::new(),
            run_id: self.record.id.clone(),
            path: path.to_owned(),
            kind: collected.kind,
            size_bytes: info.size_bytes,
            sha256: info.sha256,
            mode: collected.mode,
            skipped: collected.skipped,
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
