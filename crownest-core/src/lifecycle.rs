//! The status gate (DESIGN §2.2): the pure transition table, and [`advance`], the one place
//! a run's status is written.
//!
//! ```text
//! awaiting_archive ─archive_verified─▶ archive_ready ─start─▶ queued ─slot_acquired─▶ starting
//!   starting ─command_started─▶ running ─command_ended─▶ finalizing ─finalized(outcome)─▶ terminal
//!   starting ─command_ended (archive rejected, spawn failed, cancel)─▶ finalizing
//!   awaiting_archive | archive_ready | queued ─cancel─▶ canceled   (nothing to stop)
//!   awaiting_archive ─archive_ttl_expired─▶ canceled                (no archive in time)
//!   starting | running ─cancel─▶ finalizing                       (the kill ladder runs first)
//!   any non-terminal ─host_restarted─▶ failed
//! ```
//! Terminal states absorb: every input on them is an [`Error::InvalidTransition`].
//!
//! The engine never names a target status: it names what happened (an [`Input`]) and the
//! table decides where the run goes. `tests/status_gate.rs` checks that no other code in
//! the workspace assigns `RunRecord::status`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{EventKind, NewEvent};
use crate::run::RunRecord;
use crate::status::RunStatus;
use crate::time::Timestamp;

/// How a run ended, as decided when it leaves `finalizing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// → `succeeded`.
    Succeeded,
    /// → `failed`.
    Failed,
    /// → `canceled`.
    Canceled,
}

impl Outcome {
    /// The terminal state of this outcome.
    pub fn status(self) -> RunStatus {
        match self {
            Self::Succeeded => RunStatus::Succeeded,
            Self::Failed => RunStatus::Failed,
            Self::Canceled => RunStatus::Canceled,
        }
    }
}

/// An input to the state machine: something that happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// The archive was uploaded and verified.
    ArchiveVerified,
    /// A client started the run.
    Start,
    /// A concurrency slot was granted.
    SlotAcquired,
    /// The command was spawned.
    CommandStarted,
    /// The command ended (or could not start); finalization begins.
    CommandEnded,
    /// A client canceled.
    Cancel,
    /// The run waited in `awaiting_archive` longer than the engine's TTL.
    ArchiveTtlExpired,
    /// Finalization finished with this outcome.
    Finalized(Outcome),
    /// The process driving the run went away (recovery found it unfinished after its host
    /// restarted), or its driver failed before it could finalize: the run ends `failed`
    /// wherever it was.
    HostRestarted,
}

impl Input {
    /// Every input, for exhaustive checks.
    pub const ALL: [Input; 11] = [
        Self::ArchiveVerified,
        Self::Start,
        Self::SlotAcquired,
        Self::CommandStarted,
        Self::CommandEnded,
        Self::Cancel,
        Self::ArchiveTtlExpired,
        Self::Finalized(Outcome::Succeeded),
        Self::Finalized(Outcome::Failed),
        Self::Finalized(Outcome::Canceled),
        Self::HostRestarted,
    ];

    /// A short name for errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::ArchiveVerified => "archive_verified",
            Self::Start => "start",
            Self::SlotAcquired => "slot_acquired",
            Self::CommandStarted => "command_started",
            Self::CommandEnded => "command_ended",
            Self::Cancel => "cancel",
            Self::ArchiveTtlExpired => "archive_ttl_expired",
            Self::Finalized(_) => "finalized",
            Self::HostRestarted => "host_restarted",
        }
    }
}

/// The transition table. Pure; never panics; every pair not listed is
/// [`Error::InvalidTransition`].
pub fn transition(from: RunStatus, input: Input) -> Result<RunStatus> {
    use Input as I;
    use RunStatus as S;
    let to = match (from, input) {
        (S::AwaitingArchive, I::ArchiveVerified) => S::ArchiveReady,
        (S::ArchiveReady, I::Start) => S::Queued,
        (S::Queued, I::SlotAcquired) => S::Starting,
        (S::Starting, I::CommandStarted) => S::Running,
        (S::Starting | S::Running, I::CommandEnded) => S::Finalizing,
        (S::AwaitingArchive | S::ArchiveReady | S::Queued, I::Cancel) => S::Canceled,
        (S::AwaitingArchive, I::ArchiveTtlExpired) => S::Canceled,
        (S::Starting | S::Running, I::Cancel) => S::Finalizing,
        (S::Finalizing, I::Finalized(outcome)) => outcome.status(),
        (s, I::HostRestarted) if !s.is_terminal() => S::Failed,
        _ => {
            return Err(Error::InvalidTransition {
                from,
                input: input.name(),
            });
        }
    };
    Ok(to)
}

/// Moves `record` through the table on `input` at `at`, and returns the `status` event
/// that records the move (to be committed with the record).
///
/// The only writer of [`RunRecord::status`]: it sets the status [`transition`] decides,
/// records the milestone the new status marks ([`crate::run::RunTimestamps::on_status`],
/// at the event's `at`), and names the previous status in the event. A refused input is
/// [`Error::InvalidTransition`] and leaves the record untouched.
pub fn advance(record: &mut RunRecord, input: Input, at: Timestamp) -> Result<NewEvent> {
    let previous = record.status;
    let status = transition(previous, input)?;
    record.status = status;
    record.timestamps.on_status(status, at);
    Ok(NewEvent {
        at,
        kind: EventKind::Status {
            status,
            previous: Some(previous),
        },
    })
}

/// The `status` event that opens a new run's chain: the state [`RunRecord::new`] gives a
/// run (`awaiting_archive`), with no previous state.
pub fn opened(record: &RunRecord, at: Timestamp) -> NewEvent {
    NewEvent {
        at,
        kind: EventKind::Status {
            status: record.status,
            previous: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunOwner;
    use crate::spec::{Limits, RunSpec};
    use proptest::prelude::*;

    fn record() -> RunRecord {
        RunRecord::new(
            crate::ids::RunId::new(),
            RunSpec::new(["true"]),
            "fake".into(),
            Limits::default(),
            RunOwner::current("test"),
        )
    }

    proptest! {
        /// Whatever the inputs, `advance` agrees with `transition`, the event names the
        /// move, a refusal changes nothing, and the milestones are the `at` of the status
        /// that marks them.
        #[test]
        fn advance_is_transition_plus_its_event(picks in proptest::collection::vec(0usize..11, 0..30)) {
            let mut r = record();
            for (n, pick) in picks.into_iter().enumerate() {
                let input = Input::ALL[pick];
                let at = Timestamp::from_millis(1_000 + n as i64);
                let before = r.clone();
                match (transition(before.status, input), advance(&mut r, input, at)) {
                    (Ok(to), Ok(event)) => {
                        prop_assert_eq!(r.status, to);
                        prop_assert_eq!(event.at, at);
                        let is_move = matches!(
                            event.kind,
                            EventKind::Status { status, previous: Some(p) } if status == to && p == before.status
                        );
                        prop_assert!(is_move);
                        let mut expected = before.timestamps.clone();
                        expected.on_status(to, at);
                        prop_assert_eq!(&r.timestamps, &expected);
                    }
                    (Err(_), Err(Error::InvalidTransition { from, input: name })) => {
                        prop_assert_eq!(from, before.status);
                        prop_assert_eq!(name, input.name());
                        prop_assert_eq!(&r, &before);
                    }
                    (expected, got) => prop_assert!(false, "transition {expected:?}, advance {got:?}"),
                }
            }
        }
    }

    #[test]
    fn a_new_run_opens_its_chain_in_awaiting_archive() {
        let r = record();
        let at = Timestamp::from_millis(5);
        let e = opened(&r, at);
        assert!(matches!(
            e.kind,
            EventKind::Status {
                status: RunStatus::AwaitingArchive,
                previous: None
            }
        ));
    }
}
