//! Run states (DESIGN §2.2): what a run can be. How it moves from one to the next is
//! [`crate::lifecycle`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a Workspace Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
