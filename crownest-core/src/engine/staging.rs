//! Staged transfers are bounded: at most `max_open_transfers_per_run` open per run and at
//! most `max_staged_bytes` declared across the store, checked by [`admit`] when a transfer
//! begins; and a transfer lives only while its run can still take an archive (it is
//! discarded once the run is `archive_ready`, canceled or expired, and by
//! [`crate::WorkspaceRuns::collect_garbage`] for whatever a crash left).
//!
//! Declared sizes count, not bytes received: a client that declared 4 GiB may send them, so
//! that is what the disk must be able to hold.

use std::collections::BTreeMap;

use super::WorkspaceRuns;
use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::lifecycle::{Input, transition};
use crate::status::RunStatus;
use crate::store::TransferRecord;

/// `LimitExceeded.limit` when a run already has its maximum of open transfers.
pub const OPEN_TRANSFERS_PER_RUN: &str = "openTransfersPerRun";
/// `LimitExceeded.limit` when the open transfers' declared bytes would pass the engine's cap.
pub const STAGED_BYTES_PER_ENGINE: &str = "stagedBytesPerEngine";

/// Is this `LimitExceeded.limit` about what is open right now (so the same request may
/// succeed later, once transfers complete or expire) rather than about the request itself?
/// HTTP answers the former 429, the latter 413.
pub fn is_capacity_limit(limit: &str) -> bool {
    limit == OPEN_TRANSFERS_PER_RUN || limit == STAGED_BYTES_PER_ENGINE
}

/// The caps [`admit`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingCaps {
    /// Open transfers per run.
    pub open_transfers_per_run: usize,
    /// Declared bytes of all open transfers.
    pub staged_bytes: u64,
}

/// May a transfer of `size_bytes` for `run` begin beside the `open` ones? Pure.
pub fn admit(
    open: &[TransferRecord],
    run: &RunId,
    size_bytes: u64,
    caps: StagingCaps,
) -> Result<()> {
    let of_run = open.iter().filter(|t| t.run_id == *run).count();
    if of_run >= caps.open_transfers_per_run {
        return Err(Error::LimitExceeded {
            limit: OPEN_TRANSFERS_PER_RUN,
            max: caps.open_transfers_per_run as u64,
        });
    }
    let staged = open
        .iter()
        .fold(0u64, |sum, t| sum.saturating_add(t.descriptor.size_bytes));
    if staged.saturating_add(size_bytes) > caps.staged_bytes {
        return Err(Error::LimitExceeded {
            limit: STAGED_BYTES_PER_ENGINE,
            max: caps.staged_bytes,
        });
    }
    Ok(())
}

/// Can a run in this state still take an archive (and so keep its transfers)?
pub fn takes_archive(status: RunStatus) -> bool {
    transition(status, Input::ArchiveVerified).is_ok()
}

impl WorkspaceRuns {
    fn staging_caps(&self) -> StagingCaps {
        StagingCaps {
            open_transfers_per_run: self.inner.config.max_open_transfers_per_run,
            staged_bytes: self.inner.config.max_staged_bytes,
        }
    }

    /// Stores a new transfer if [`admit`] allows it. Admissions are serialized in this
    /// engine, so two concurrent requests cannot both take the last place.
    pub(super) async fn create_transfer_within_caps(&self, t: &TransferRecord) -> Result<()> {
        let _admission = self.inner.staging_admission.lock().await;
        let open = self.inner.store.list_transfers(None).await?;
        admit(
            &open,
            &t.run_id,
            t.descriptor.size_bytes,
            self.staging_caps(),
        )?;
        self.inner.store.create_transfer(t).await
    }

    /// Discards the open transfers of a run that can no longer use them. Best effort: what
    /// fails here is left to `collect_garbage`. Returns how many were discarded.
    pub(super) async fn discard_transfers(&self, run: &RunId) -> u64 {
        let open = match self.inner.store.list_transfers(Some(run)).await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(run = %run, error = %e.chain(), "listing transfers to discard");
                return 0;
            }
        };
        let mut discarded = 0;
        for t in open {
            match self.inner.store.delete_transfer(&t.transfer_id).await {
                Ok(()) => discarded += 1,
                Err(e) => {
                    tracing::warn!(run = %run, transfer = %t.transfer_id, error = %e.chain(), "discarding a transfer")
                }
            }
        }
        discarded
    }

    /// Discards every transfer whose run is gone or can no longer take an archive.
    pub(super) async fn discard_stray_transfers(&self) -> Result<u64> {
        let mut by_run: BTreeMap<RunId, Vec<TransferRecord>> = BTreeMap::new();
        for t in self.inner.store.list_transfers(None).await? {
            by_run.entry(t.run_id.clone()).or_default().push(t);
        }
        let mut discarded = 0;
        for (run, transfers) in by_run {
            let stray = match self.inner.store.get_run(&run).await {
                Ok(r) => !takes_archive(r.status),
                Err(Error::NotFound { .. }) => true,
                Err(e) => return Err(e),
            };
            if stray {
                for t in transfers {
                    self.inner.store.delete_transfer(&t.transfer_id).await?;
                    discarded += 1;
                }
            }
        }
        Ok(discarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Sha256Digest, TransferId};
    use crate::run::ArchiveDescriptor;
    use crate::time::Timestamp;

    fn transfer(run: &RunId, size_bytes: u64) -> TransferRecord {
        TransferRecord {
            transfer_id: TransferId::new(),
            run_id: run.clone(),
            descriptor: ArchiveDescriptor {
                size_bytes,
                sha256: Sha256Digest::of(b"x"),
            },
            chunk_size_bytes: 1024,
            received: Default::default(),
            created_at: Timestamp::now(),
        }
    }

    const CAPS: StagingCaps = StagingCaps {
        open_transfers_per_run: 2,
        staged_bytes: 100,
    };

    fn limit_of(r: Result<()>) -> Option<&'static str> {
        match r {
            Err(Error::LimitExceeded { limit, .. }) => Some(limit),
            _ => None,
        }
    }

    #[test]
    fn the_per_run_cap_counts_only_that_runs_transfers() {
        let (a, b) = (RunId::new(), RunId::new());
        let open = vec![transfer(&a, 1), transfer(&b, 1), transfer(&b, 1)];
        assert!(admit(&open, &a, 1, CAPS).is_ok());
        assert_eq!(
            limit_of(admit(&open, &b, 1, CAPS)),
            Some(OPEN_TRANSFERS_PER_RUN)
        );
    }

    #[test]
    fn the_byte_cap_counts_declared_sizes_of_every_run_up_to_and_including_the_cap() {
        let (a, b) = (RunId::new(), RunId::new());
        let open = vec![transfer(&a, 60)];
        assert!(admit(&open, &b, 40, CAPS).is_ok(), "exactly the cap fits");
        assert_eq!(
            limit_of(admit(&open, &b, 41, CAPS)),
            Some(STAGED_BYTES_PER_ENGINE)
        );
        let huge = vec![transfer(&a, u64::MAX)];
        assert_eq!(
            limit_of(admit(&huge, &b, u64::MAX, CAPS)),
            Some(STAGED_BYTES_PER_ENGINE),
            "no overflow"
        );
    }

    #[test]
    fn only_capacity_limits_are_capacity_limits() {
        assert!(is_capacity_limit(OPEN_TRANSFERS_PER_RUN));
        assert!(is_capacity_limit(STAGED_BYTES_PER_ENGINE));
        assert!(!is_capacity_limit("stagedUploadMaxBytes"));
    }

    #[test]
    fn only_a_run_awaiting_its_archive_takes_one() {
        for s in RunStatus::ALL {
            assert_eq!(takes_archive(s), s == RunStatus::AwaitingArchive, "{s:?}");
        }
    }
}
