//! The one commit path of the engine (events + record, then subscribers are woken), the
//! status gate's commit (`set_status`), and the terminal commit (`terminate`: `status`,
//! `terminal`, the Evidence Bundle and its envelope in ONE store commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{LiveBatch, WorkspaceRuns, lock};
use crate::error::{Error, Result};
use crate::event::{Event, EventKind, Failure, NewEvent, seal};
use crate::evidence::{EvidenceBundle, EvidenceSandbox, OutputSummary, SpecRecord};
use crate::ids::RunId;
use crate::lifecycle::{self, Input, transition};
use crate::run::RunRecord;
use crate::signing::DsseEnvelope;
use crate::store::RunCommit;
use crate::time::Timestamp;

impl WorkspaceRuns {
    pub(super) fn run_lock(&self, id: &RunId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.run_locks)
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// The one commit path of the engine: appends `events` and stores `record` (and the
    /// evidence with a terminal event), then wakes subscribers.
    pub(super) async fn commit(
        &self,
        record: &mut RunRecord,
        events: Vec<NewEvent>,
        evidence: Option<EvidenceBundle>,
    ) -> Result<Vec<Event>> {
        self.commit_with(record, events, evidence, None).await
    }

    /// The terminal commit: events ending with `terminal`, the evidence and its envelope.
    pub(super) async fn commit_terminal(
        &self,
        record: &mut RunRecord,
        events: Vec<NewEvent>,
        evidence: EvidenceBundle,
        envelope: Option<DsseEnvelope>,
    ) -> Result<Vec<Event>> {
        self.commit_with(record, events, Some(evidence), envelope)
            .await
    }

    pub(super) async fn commit_with(
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
        self.committed(record, &sealed);
        Ok(sealed)
    }

    /// After a commit of `record` sealed `sealed`: the metrics, the record's chain position,
    /// and the run's subscribers woken.
    pub(super) fn committed(&self, record: &mut RunRecord, sealed: &[Event]) {
        self.inner
            .metrics
            .events_appended
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        self.inner.gauges.on_commit(record, sealed);
        if let Some(last) = sealed.last() {
            record.next_seq = last.seq + 1;
            record.chain_head.clone_from(&last.hash);
            self.notify(&record.id, sealed, record.status.is_terminal());
        }
    }

    /// A receiver of the run's commit notifications (see `notify`).
    pub(super) fn watch_run(&self, id: &RunId) -> watch::Receiver<LiveBatch> {
        lock(&self.inner.watchers)
            .entry(id.clone())
            .or_insert_with(|| watch::channel(LiveBatch::default()).0)
            .subscribe()
    }

    /// Forgets the run's notification channel once no receiver is left, so waiting on or
    /// subscribing to ended runs leaves nothing behind.
    pub(super) fn release_watch(&self, id: &RunId) {
        let mut w = lock(&self.inner.watchers);
        if w.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(id);
        }
    }

    pub(super) fn notify(&self, id: &RunId, sealed: &[Event], terminal: bool) {
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
    pub(super) async fn set_status(
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
    pub(super) async fn terminate(
        &self,
        record: &mut RunRecord,
        input: Input,
        failure: Option<Failure>,
        identity: Option<crate::backend::TemplateIdentity>,
        isolation: Option<crate::backend::IsolationReport>,
        output: Option<OutputSummary>,
    ) -> Result<()> {
        let facts = TerminalFacts {
            failure,
            identity,
            isolation,
            output,
        };
        self.terminate_after(record, Vec::new(), input, facts).await
    }

    /// [`terminate`](Self::terminate), with `leading` events (a driver's deferred ones:
    /// its `finalizing` status, already applied to `record`) sealed before the `status` event.
    pub(super) async fn terminate_after(
        &self,
        record: &mut RunRecord,
        leading: Vec<NewEvent>,
        input: Input,
        facts: TerminalFacts,
    ) -> Result<()> {
        let TerminalFacts {
            failure,
            identity,
            isolation,
            output,
        } = facts;
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
        events.extend(leading);
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
            .await?;
        // An ended run never starts: its tree prepared at upload goes (canceled, expired
        // or reclaimed before `start`, or a driver that ended before materializing).
        self.discard_prepared(&record.id).await;
        Ok(())
    }
}

/// What a run ends with besides its status: the failure, and what the evidence reports of
/// the sandbox and the output.
#[derive(Debug, Default)]
pub(super) struct TerminalFacts {
    pub(super) failure: Option<Failure>,
    pub(super) identity: Option<crate::backend::TemplateIdentity>,
    pub(super) isolation: Option<crate::backend::IsolationReport>,
    pub(super) output: Option<OutputSummary>,
}
