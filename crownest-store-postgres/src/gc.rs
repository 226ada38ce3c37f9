//! Garbage collection and `discard_blob`: unreferenced blobs, bytes without a row,
//! abandoned transfers, stray staged files.
//!
//! A blob is referenced while a run's record names it as its archive or one of its
//! artifacts. Runs are never deleted, so what `gc` frees is uploads never attached to a run
//! (past `blob_grace`), blob bytes without a row (a put whose transaction failed, past
//! `blob_grace`), transfers idle past `transfer_ttl` and their chunks, chunk bytes of
//! transfers that no longer exist, and staged files older than `temp_ttl`. Every blob
//! deletion holds that blob's advisory lock ([`crate::blobs`]), so it is safe beside puts
//! and commits of other processes and hosts.

use std::time::Duration;

use crownest_core::gc::{GcPolicy, StoreGcReport};
use crownest_core::{Result, Sha256Digest};
use deadpool_postgres::Pool;

use crate::blobs::{BlobBackend, BlobLock, UNNAMED, to_u64};
use crate::error::pool as pool_error;
use crate::runs::query;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes a blob no run and no artifact names (and, with `grace`, stored longer ago than
/// that): its row, then its bytes, under its lock. The size deleted, if it was.
pub(crate) async fn discard(
    pool: &Pool,
    blobs: &dyn BlobBackend,
    sha: &Sha256Digest,
    grace: Option<Duration>,
) -> Result<Option<u64>> {
    let mut lock = BlobLock::acquire(pool, sha).await?;
    let rows = query(
        lock.client()?,
        "discarding a blob",
        &format!(
            "DELETE FROM blobs
             WHERE sha256 = $1 AND ($2::bigint IS NULL OR stored_at <= now() - $2::bigint * interval '1 millisecond')
               AND {UNNAMED}
             RETURNING size"
        ),
        &[&sha.as_str(), &grace.map(millis)],
    )
    .await?;
    let deleted = match rows.first() {
        Some(r) => {
            blobs.delete_blob(sha).await?;
            Some(to_u64(r.get(0)))
        }
        None => None,
    };
    lock.release().await?;
    Ok(deleted)
}

/// One pass with `policy`'s ages.
pub(crate) async fn collect(
    pool: &Pool,
    blobs: &dyn BlobBackend,
    policy: &GcPolicy,
) -> Result<StoreGcReport> {
    let mut report = StoreGcReport::default();
    report.temp_files_deleted = blobs.sweep_staging(policy.temp_ttl).await?;

    // Blobs no run references, past their grace period.
    let candidates: Vec<String> = {
        let client = pool.get().await.map_err(pool_error)?;
        query(
            &client,
            "querying unreferenced blobs",
            &format!(
                "SELECT sha256 FROM blobs
                 WHERE stored_at <= now() - $1::bigint * interval '1 millisecond' AND {UNNAMED}"
            ),
            &[&millis(policy.blob_grace)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    for sha in candidates {
        let Ok(sha) = Sha256Digest::parse(&sha) else {
            continue;
        };
        // Re-checked under the lock: a put or a commit may have come in meanwhile.
        if let Some(size) = discard(pool, blobs, &sha, Some(policy.blob_grace)).await? {
            report.blobs_deleted += 1;
            report.blob_bytes_freed += size;
        }
    }

    // Blob bytes with no row (their transaction failed), past the grace period.
    for sha in blobs.list_blobs(policy.blob_grace).await? {
        let mut lock = BlobLock::acquire(pool, &sha).await?;
        let known = !query(
            lock.client()?,
            "looking up a blob",
            "SELECT 1 FROM blobs WHERE sha256 = $1",
            &[&sha.as_str()],
        )
        .await?
        .is_empty();
        if !known && blobs.delete_blob(&sha).await? {
            report.orphan_blob_files_deleted += 1;
        }
        lock.release().await?;
    }

    // Transfers idle past their TTL (chunk rows go with them), then their bytes.
    let client = pool.get().await.map_err(pool_error)?;
    let stale = query(
        &client,
        "deleting idle transfers",
        "DELETE FROM transfers WHERE updated_at <= now() - $1::bigint * interval '1 millisecond'
         RETURNING transfer_id",
        &[&millis(policy.transfer_ttl)],
    )
    .await?;
    report.transfers_deleted = stale.len() as u64;
    // Every set of chunk bytes without a transfer row: just deleted above, or left behind
    // by a crash between a delete's row and its bytes. Chunk bytes only ever land while
    // their transfer's row is locked, so a missing row means the transfer is gone.
    for id in blobs.list_chunk_sets().await? {
        let exists = !query(
            &client,
            "looking up a transfer",
            "SELECT 1 FROM transfers WHERE transfer_id = $1",
            &[&id.as_str()],
        )
        .await?
        .is_empty();
        if !exists {
            blobs.delete_chunks(&id).await?;
        }
    }
    Ok(report)
}
