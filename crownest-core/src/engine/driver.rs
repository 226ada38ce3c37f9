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
use super::ladder::{KillAction, KillLadder, KillTiming};
use super::sink::{EngineSink, OutputChunker, SinkMsg};
use crate::archive::ExtractPolicy;
use crate::artifact::CollectedArtifact;
use crate::backend::{
    Destroyed, ExecOutcome, ExecRequest, ExitStatus, IsolationReport, Sandbox, SandboxBackend,
    SandboxSpec, TemplateIdentity,
};
use crate::error::{Error, Result};
use crate::event::{
    ArchivePhase, ArtifactErrorReason, EventKind, Failure, FailureKind, KillReason, NewEvent,
};
use crate::evidence::OutputSummary;
use crate::ids::ArtifactId;
use crate::lifecycle::{Input, Outcome};
use crate::run::{Artifact, ArtifactErrorRecord, RunRecord, SandboxRecord};
use crate::secret::SecretValue;
use crate::status::RunStatus;
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

/// Sleeps until `due`; never wakes without one.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How the command's execution ended.
enum CommandEnd {
    /// `exec` returned: the command ended (on its own, or on a signal of the ladder) with
    /// this outcome, or the sandbox could not run it.
    Returned(Result<ExecOutcome>),
    /// The ladder's last rung destroyed the sandbox with the command still in it: the
    /// command did not end, so there is no exit status (the run's failure says why the
    /// ladder climbed).
    DestroyedByLadder,
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
                let _ = self
                    .engine
                    .terminate(
                        &mut fresh,
                        input,
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
        self.isolation = Some(sandbox.isolation());
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
        let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.timeout_ms);
        let mut ladder = KillLadder::new(
            deadline.into_std(),
            KillTiming {
                grace: Duration::from_millis(limits.kill_grace_ms),
                confirm: self.engine.config().kill_confirm_timeout,
            },
        );
        // Output commits run behind the command: one commit is in flight while the
        // next batch gathers, and `exec` (which reads the pipes) keeps being polled
        // meanwhile. Awaiting each commit inside the loop would stop reading output for
        // the length of every store write (an fsync on disk), one 64 KiB read per commit.
        let mut output = OutputCommits::default();
        let end = self
            .supervise(
                sandbox,
                sandbox.exec(&request, &sink),
                &mut rx,
                &mut output,
                &mut ladder,
            )
            .await?;
        drop(sink);
        self.finish_output(&chunker, &mut rx, output).await?;
        self.output = Some(chunker.summary());
        self.conclude(sandbox, end, ladder.reason()).await
    }

    /// While the command runs: output commits, the `running` status, heartbeats, cancel,
    /// and the kill ladder (woken at its deadline or next rung). Returns when the command
    /// ended or the ladder's last rung destroyed the sandbox around it.
    async fn supervise(
        &mut self,
        sandbox: &dyn Sandbox,
        exec: impl Future<Output = Result<ExecOutcome>>,
        rx: &mut mpsc::Receiver<SinkMsg>,
        output: &mut OutputCommits,
        ladder: &mut KillLadder,
    ) -> Result<CommandEnd> {
        let cfg = self.engine.config().clone();
        let mut exec = std::pin::pin!(exec);
        let begun = tokio::time::Instant::now();
        let mut heartbeat =
            tokio::time::interval_at(begun + cfg.heartbeat_interval, cfg.heartbeat_interval);
        let mut cancel_poll = tokio::time::interval(cfg.cancel_poll_interval);
        loop {
            let due = ladder.due().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                done = in_flight(&mut output.in_flight), if output.in_flight.is_some() => {
                    output.in_flight = None;
                    self.committed(done)?;
                    self.start_output_commit(output);
                }
                msg = rx.recv(), if output.pending.len() < MAX_OUTPUT_BATCH => {
                    if let Some(msg) = msg {
                        self.received(msg, rx, output).await?;
                    }
                }
                r = &mut exec => {
                    ladder.command_ended();
                    return Ok(CommandEnd::Returned(r));
                }
                _ = until(due) => {
                    if self.climb(sandbox, ladder, output).await? {
                        return Ok(CommandEnd::DestroyedByLadder);
                    }
                }
                _ = self.cancel.changed(), if !ladder.is_climbing() => {
                    if self.cancel_requested() {
                        ladder.cancel(tokio::time::Instant::now().into_std());
                        self.climb(sandbox, ladder, output).await?;
                    }
                }
                _ = cancel_poll.tick(), if !ladder.is_climbing() => {
                    if self.engine.get(&self.record.id).await?.cancel_requested {
                        ladder.cancel(tokio::time::Instant::now().into_std());
                        self.climb(sandbox, ladder, output).await?;
                    }
                }
                _ = heartbeat.tick(), if self.record.status == RunStatus::Running => {
                    self.flush_output(output).await?;
                    self.commit(vec![NewEvent::now(EventKind::Heartbeat {})]).await?;
                }
            }
        }
    }

    /// A message from the sink: `started` moves the run to `running` (after the output
    /// before it); output events gather, with whatever else is already queued, into the
    /// next commit.
    async fn received(
        &mut self,
        msg: SinkMsg,
        rx: &mut mpsc::Receiver<SinkMsg>,
        output: &mut OutputCommits,
    ) -> Result<()> {
        match msg {
            SinkMsg::Started => self.command_started(output).await?,
            SinkMsg::Events(events) => {
                output.pending.extend(events);
                while output.pending.len() < MAX_OUTPUT_BATCH {
                    match rx.try_recv() {
                        Ok(SinkMsg::Events(more)) => output.pending.extend(more),
                        Ok(SinkMsg::Started) => self.command_started(output).await?,
                        Err(_) => break,
                    }
                }
                self.start_output_commit(output);
            }
        }
        Ok(())
    }

    /// `running`, after the output received before it.
    async fn command_started(&mut self, output: &mut OutputCommits) -> Result<()> {
        self.flush_output(output).await?;
        self.status(Input::CommandStarted, Vec::new()).await
    }

    /// Carries out the ladder's rung that is due now: the output so far, the `kill` event,
    /// then the signal or the destroy (a failure is an `error` event, and the ladder climbs
    /// on). Returns true when that was the last rung: the sandbox is destroyed.
    async fn climb(
        &mut self,
        sandbox: &dyn Sandbox,
        ladder: &mut KillLadder,
        output: &mut OutputCommits,
    ) -> Result<bool> {
        self.flush_output(output).await?;
        let Some(rung) = ladder.poll(tokio::time::Instant::now().into_std()) else {
            return Ok(false);
        };
        self.commit(vec![NewEvent::now(rung.event())]).await?;
        let result = match rung.action {
            KillAction::Signal(signal) => sandbox.signal(signal).await,
            KillAction::Destroy => sandbox.destroy().await.map(|_| ()),
        };
        if let Err(e) = result {
            self.commit(vec![NewEvent::now(EventKind::Error {
                code: "kill_failed".into(),
                message: e.chain(),
            })])
            .await?;
        }
        Ok(ladder.destroyed().is_some())
    }

    /// After the command: the commit in flight, then what the sink produced before the
    /// command ended, the bytes the chunker still holds, and `output_truncated` per stream
    /// that dropped bytes.
    async fn finish_output(
        &mut self,
        chunker: &OutputChunker,
        rx: &mut mpsc::Receiver<SinkMsg>,
        mut output: OutputCommits,
    ) -> Result<()> {
        if let Some(f) = output.in_flight.take() {
            self.committed(f.await)?;
        }
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
        Ok(())
    }

    /// What the command's end means for the run, before artifacts: the ladder's reason
    /// first (a timeout is `timed_out` whatever the killed command reports), then the exit
    /// status. Records what the sandbox enforced for this command, survivors, and the exit
    /// code or signal when there is one.
    async fn conclude(
        &mut self,
        sandbox: &dyn Sandbox,
        end: CommandEnd,
        killed: Option<KillReason>,
    ) -> Result<Ending> {
        let outcome = match end {
            CommandEnd::Returned(Ok(outcome)) => Some(outcome),
            CommandEnd::Returned(Err(e)) => {
                return Ok(Ending::failed(FailureKind::SandboxError, e.chain()));
            }
            CommandEnd::DestroyedByLadder => {
                if let Some(sb) = self.record.sandbox.as_mut() {
                    sb.destroyed = true;
                }
                None
            }
        };
        // What the sandbox enforced may have changed while spawning (e.g. a containment
        // fallback): record what was true for this command.
        let before = self.isolation.clone();
        self.isolation = Some(sandbox.isolation());
        let mut events = Vec::new();
        let survivors = outcome.as_ref().map_or(&[][..], |o| &o.survivors[..]);
        if !survivors.is_empty() {
            let message = format!(
                "{} process(es) survived the final kill: {}",
                survivors.len(),
                survivors.join(", ")
            );
            if let Some(iso) = self.isolation.as_mut() {
                iso.details.insert("survivors".into(), survivors.join(", "));
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
        if let Some(outcome) = &outcome {
            match &outcome.status {
                ExitStatus::Exited(code) => self.record.exit_code = Some(*code),
                ExitStatus::Signaled(sig) => self.record.signal = Some(*sig),
                _ => {}
            }
        }
        match killed {
            Some(KillReason::Cancel) => return Ok(Ending::canceled()),
            Some(KillReason::Timeout) => {
                return Ok(Ending::failed(
                    FailureKind::TimedOut,
                    format!(
                        "the command ran past its {} ms deadline and was killed",
                        self.record.limits.timeout_ms
                    ),
                ));
            }
            _ => {}
        }
        let Some(outcome) = outcome else {
            // The ladder climbs only for a timeout or a cancel, both handled above.
            return Ok(Ending::failed(
                FailureKind::SandboxError,
                "the sandbox was destroyed before the command ended",
            ));
        };
        Ok(match outcome.status {
            ExitStatus::Exited(0) => Ending {
                outcome: Outcome::Succeeded,
                failure: None,
            },
            ExitStatus::Exited(code) => Ending::failed(
                FailureKind::ExitNonzero,
                format!("the command exited with code {code}"),
            ),
            ExitStatus::Signaled(sig) => Ending::failed(
                FailureKind::Signaled,
                format!("the command was killed by signal {sig}"),
            ),
            ExitStatus::SpawnFailed(msg) => Ending::failed(FailureKind::SpawnFailed, msg),
            ExitStatus::LimitExceeded(msg) => Ending::failed(FailureKind::LimitExceeded, msg),
        })
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
                Input::Finalized(ending.outcome),
                ending.failure,
                self.identity.clone(),
                self.isolation.clone(),
                self.output.clone(),
            )
            .await?;
        self.record = rec;
        Ok(())
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
