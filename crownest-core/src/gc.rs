//! Garbage collection: the ages that make stored things collectable ([`GcPolicy`]), what a
//! store's pass removed ([`StoreGcReport`]), and what an engine's pass did ([`GcReport`]).
//!
//! The passes themselves are [`crate::Store::collect_garbage`] (blobs, transfers, stray files)
//! and [`crate::WorkspaceRuns::collect_garbage`] (the store's pass plus the `awaiting_archive`
//! TTL and the transfers of runs that no longer await an archive).

use std::time::Duration;

use serde::Serialize;

use crate::ids::RunId;

/// Ages that make things collectable. `GcPolicy::default()`:
///
/// | age | default | what it protects |
/// |---|---|---|
/// | `blob_grace` | 1 h | a blob stored (or stored again) this recently is kept even if no run names it, so an upload has time to be attached to its run |
/// | `transfer_ttl` | 24 h | a staged transfer that was created or received a chunk this recently is kept |
/// | `temp_ttl` | 1 h | temporary files of uploads in progress (stores that have them) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Unreferenced blobs stored (or stored again) longer ago than this are deleted.
    pub blob_grace: Duration,
    /// Transfers with no chunk received for this long are deleted.
    pub transfer_ttl: Duration,
    /// Temporary files older than this are deleted.
    pub temp_ttl: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            blob_grace: Duration::from_secs(3600),
            transfer_ttl: Duration::from_secs(24 * 3600),
            temp_ttl: Duration::from_secs(3600),
        }
    }
}

/// What one [`crate::Store::collect_garbage`] pass deleted. A store fills in what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StoreGcReport {
    /// Blobs deleted (rows and files).
    pub blobs_deleted: u64,
    /// Bytes of blobs deleted.
    pub blob_bytes_freed: u64,
    /// Blob files without a row deleted (left by a transaction that rolled back).
    pub orphan_blob_files_deleted: u64,
    /// Transfers deleted (and their chunks).
    pub transfers_deleted: u64,
    /// Temporary files (and trash left by a crash) deleted.
    pub temp_files_deleted: u64,
}

/// What one [`crate::WorkspaceRuns::collect_garbage`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct GcReport {
    /// Runs that were still in `awaiting_archive` past the TTL, now `canceled`.
    pub expired_runs: Vec<RunId>,
    /// Staged transfers discarded because their run no longer awaits an archive.
    pub transfers_discarded: u64,
    /// The store's own pass.
    pub store: StoreGcReport,
}

impl GcReport {
    /// True when the pass removed nothing.
    pub fn is_empty(&self) -> bool {
        self.expired_runs.is_empty()
            && self.transfers_discarded == 0
            && self.store == StoreGcReport::default()
    }
}
