//! The `running` phase of a driver: the command, its output on its way to the store, the
//! heartbeats, cancel requests, and the kill ladder (`engine/ladder.rs`) consulted at its
//! deadline and at each rung.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::{Driver, Ending};
use crate::backend::{ExecOutcome, ExecRequest, ExitStatus, Sandbox};
use crate::engine::ladder::{KillAction, KillLadder, KillTiming};
use crate::engine::sink::{EngineSink, OutputChunker, SinkMsg};
use crate::error::Result;
use crate::event::{EventKind, FailureKind, KillReason, NewEvent};
use crate::lifecycle::{Input, Outcome};
use crate::status::RunStatus;

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

impl Driver {
    /// Runs the command: output, heartbeats, deadline, cancel and the kill ladder.
    pub(super) async fn execute(&mut self, sandbox: &dyn Sandbox) -> Result<Ending> {
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
        // The first poll one period in (the run's record was read at `start`): an
        // `interval`'s immediate first tick would read the store while the command starts,
        // and keep `exec` unpolled meanwhile.
        let mut cancel_poll =
            tokio::time::interval_at(begun + cfg.cancel_poll_interval, cfg.cancel_poll_interval);
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
                    if self.engine.get(&self.record.id).await?.stop_requested() {
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
        self.isolation = Some(self.enforced(sandbox.isolation()));
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
}
