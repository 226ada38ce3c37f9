//! A refused archive is not kept: when the extraction policy refuses a stored archive, its
//! blob is deleted at once, unless a run names it (its archive, or an artifact: the store
//! checks, see [`crate::Store::discard_blob`]) or another upload or attach of the same bytes
//! is in progress in this engine (counted by [`Verifying`]), whose run may yet accept it
//! under its own limits. A size or digest mismatch keeps nothing in the first place
//! (`put_blob`), and a mismatched staged transfer is discarded.
//!
//! What this misses (an upload of the same bytes through another engine process at the same
//! instant, a crash between refusal and delete) is an unnamed blob, which the store's
//! garbage collection deletes after its grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{WorkspaceRuns, lock};
use crate::ids::Sha256Digest;

/// Archives being uploaded or verified in this engine, by digest.
#[derive(Debug, Default)]
pub(super) struct Verifying {
    counts: Arc<Mutex<HashMap<Sha256Digest, usize>>>,
}

/// One upload or attach in progress; dropping it ends it.
#[derive(Debug)]
pub(super) struct VerifyingGuard {
    counts: Arc<Mutex<HashMap<Sha256Digest, usize>>>,
    sha256: Sha256Digest,
}

impl Verifying {
    /// Counts an upload or attach of `sha256` until the guard is dropped.
    pub(super) fn begin(&self, sha256: &Sha256Digest) -> VerifyingGuard {
        *lock(&self.counts).entry(sha256.clone()).or_default() += 1;
        VerifyingGuard {
            counts: self.counts.clone(),
            sha256: sha256.clone(),
        }
    }
}

impl VerifyingGuard {
    /// Is another upload or attach of the same bytes in progress?
    fn shared(&self) -> bool {
        lock(&self.counts).get(&self.sha256).is_some_and(|&n| n > 1)
    }
}

impl Drop for VerifyingGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.sha256);
            }
        }
    }
}

impl WorkspaceRuns {
    /// After the policy refused the archive `guard` verifies: delete its blob unless it is
    /// still wanted. Best effort: a failure is logged and left to garbage collection.
    pub(super) async fn discard_rejected(&self, guard: &VerifyingGuard) {
        if guard.shared() {
            return;
        }
        match self.inner.store.discard_blob(&guard.sha256).await {
            Ok(deleted) => {
                tracing::debug!(sha256 = %guard.sha256, deleted, "refused archive");
            }
            Err(e) => {
                tracing::warn!(sha256 = %guard.sha256, error = %e.chain(), "deleting a refused archive");
            }
        }
    }
}
