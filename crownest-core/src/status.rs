//! Run states and the pure transition function (DESIGN §2.2).
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

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The state of a Workspace Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created; waiting for its archive.
    AwaitingArchive,
    /// The archive is verified and stored.
    ArchiveReady,
    /// Started; waiting for a concurrency slot.
    Queued,
    /// Sandbox being created and the archive extracted.
    Starting,
    /// The command runs.
    Running,
    /// The command ended; artifacts, cleanup and evidence are being written.
    Finalizing,
    /// Exit code 0.
    Succeeded,
    /// Anything else that ended the run, with a typed failure.
    Failed,
    /// Canceled by a client.
    Canceled,
}

impl RunStatus {
    /// Every state, in lifecycle order.
    pub const ALL: [RunStatus; 9] = [
        Self::AwaitingArchive,
        Self::ArchiveReady,
        Self::Queued,
        Self::Starting,
        Self::Running,
        Self::Finalizing,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    /// `succeeded`, `failed` or `canceled`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingArchive => "awaiting_archive",
            Self::ArchiveReady => "archive_ready",
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Finalizing => "finalizing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// An input to the state machine.
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
    /// Recovery found the run unfinished after its host went away.
    HostRestarted,
}

impl Input {
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
