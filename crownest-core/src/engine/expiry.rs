//! The `awaiting_archive` TTL: a run that has not got a verified archive
//! `awaiting_archive_ttl` after it was created ends `canceled`, through the transition
//! table (`archive_ttl_expired`) and the one terminal commit (status + `terminal` event +
//! Evidence Bundle), with the failure `limit_exceeded` / "awaiting_archive TTL expired ...".
//! Its open transfers are discarded and the env values held for it are dropped.
//!
//! The TTL counts from creation, not from the last chunk: a client cannot hold a run (and
//! its share of the staged-bytes budget) open for ever by trickling bytes. Expiry happens in
//! [`WorkspaceRuns::collect_garbage`], so a run ends at most one gc interval after its TTL.

use std::time::Duration;

use super::{WorkspaceRuns, lock};
use crate::error::{Error, Result};
use crate::event::{Failure, FailureKind};
use crate::ids::RunId;
use crate::lifecycle::{Input, transition};
use crate::status::RunStatus;
use crate::store::RunQuery;
use crate::time::Timestamp;

/// Has a run created at `created` waited `ttl` or longer at `now`? Pure.
pub(super) fn is_expired(created: Timestamp, now: Timestamp, ttl: Duration) -> bool {
    u128::from(now.millis_since(created)) >= ttl.as_millis()
}

/// The failure an expired run ends with.
fn expiry_failure(ttl: Duration) -> Failure {
    Failure::new(
        FailureKind::LimitExceeded,
        format!(
            "awaiting_archive TTL expired: no archive was verified within {} ms of the run's creation",
            ttl.as_millis()
        ),
    )
}

impl WorkspaceRuns {
    /// Ends every run that is still in `awaiting_archive` `awaiting_archive_ttl` after its
    /// creation (see the module docs); returns their ids. A run another writer changed in
    /// the meantime is left for the next pass.
    pub async fn expire_awaiting_archive(&self) -> Result<Vec<RunId>> {
        let ttl = self.inner.config.awaiting_archive_ttl;
        let now = Timestamp::now();
        let mut candidates = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .inner
                .store
                .list_runs(&RunQuery {
                    status: Some(RunStatus::AwaitingArchive),
                    limit: 500,
                    before: before.clone(),
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.id.clone());
            candidates.extend(
                page.iter()
                    .filter(|r| {
                        r.timestamps
                            .created
                            .is_some_and(|c| is_expired(c, now, ttl))
                    })
                    .map(|r| r.id.clone()),
            );
        }
        let mut expired = Vec::new();
        for id in candidates {
            match self.expire(&id, ttl).await {
                Ok(true) => expired.push(id),
                Ok(false) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }

    /// Expires one run if it is still awaiting its archive past the TTL.
    async fn expire(&self, id: &RunId, ttl: Duration) -> Result<bool> {
        let run_lock = self.run_lock(id);
        // An upload in progress in this engine holds the lock: it finishes first.
        let _guard = run_lock.lock().await;
        let mut record = self.get(id).await?;
        let due = record
            .timestamps
            .created
            .is_some_and(|c| is_expired(c, Timestamp::now(), ttl));
        if !due || transition(record.status, Input::ArchiveTtlExpired).is_err() {
            return Ok(false);
        }
        lock(&self.inner.secrets).remove(id);
        self.terminate(
            &mut record,
            Input::ArchiveTtlExpired,
            Some(expiry_failure(ttl)),
            None,
            None,
            None,
        )
        .await?;
        self.discard_transfers(id).await;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_expires_once_its_ttl_has_passed_and_not_before() {
        let created = Timestamp::from_millis(1_000_000);
        let ttl = Duration::from_secs(60);
        assert!(!is_expired(created, created, ttl));
        assert!(!is_expired(created, created.plus_millis(59_999), ttl));
        assert!(is_expired(created, created.plus_millis(60_000), ttl));
        // A clock that went backwards never expires a run.
        assert!(!is_expired(created, Timestamp::from_millis(0), ttl));
    }
}
