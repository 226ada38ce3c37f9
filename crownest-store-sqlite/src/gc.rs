//! Garbage collection: unreferenced blobs, abandoned transfers, stray temp files.
//!
//! A blob is referenced while a run's record names it as its archive or one of its
//! artifacts. Runs are never deleted, so what `gc` frees is uploads never attached to a run
//! (past `blob_grace`), blob files without a row (left by a transaction that rolled back),
//! transfers idle past `transfer_ttl` and their chunks, and temp files of crashed uploads.
//!
//! Blob and transfer deletions happen inside one write transaction (holding the SQLite
//! write lock, which every process's blob install also takes), so an upload of the same
//! bytes racing with `gc` either refreshes the row first (and is kept) or installs its
//! file after `gc` moved the old one away.

use std::time::{Duration, SystemTime};

use crownest_core::Sha256Digest;
use rusqlite::{Connection, params};

use crate::error::{Fatal as _, OpError};
use crate::runs::to_u64;
use crate::writer::{OpCtx, Shared};

pub use crownest_core::gc::{GcPolicy, StoreGcReport};

/// Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// SQL condition: no run names the `blobs` row as its archive, no artifact as its bytes.
const UNNAMED: &str = "NOT EXISTS (SELECT 1 FROM runs WHERE runs.archive_sha256 = blobs.sha256)
     AND NOT EXISTS (SELECT 1 FROM artifacts WHERE artifacts.sha256 = blobs.sha256)";

fn cutoff(now: i64, age: Duration) -> i64 {
    now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Writer op: one gc pass of the database-tracked state (blobs, transfers).
pub(crate) fn collect(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    policy: GcPolicy,
) -> Result<StoreGcReport, OpError> {
    let now = now_ms();
    let mut report = StoreGcReport::default();
    // First, before this pass moves anything to the trash in `<dir>/tmp`. Under the write
    // lock no other transaction (of any process) has trash in flight.
    report.temp_files_deleted =
        sweep_temp(ctx.shared, policy.temp_ttl).fatal("sweeping temp files")?;

    // Blobs no run references, past their grace period.
    let candidates: Vec<(String, i64)> = {
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT sha256, size FROM blobs WHERE stored_at <= ?1 AND {UNNAMED}"
            ))
            .fatal("preparing the gc blob query")?;
        let rows = st
            .query_map([cutoff(now, policy.blob_grace)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .fatal("querying unreferenced blobs")?;
        rows.collect::<rusqlite::Result<_>>()
            .fatal("reading unreferenced blobs")?
    };
    for (sha, size) in candidates {
        if delete_blob(conn, ctx, &sha)? {
            report.blob_bytes_freed += to_u64(size);
        }
        report.blobs_deleted += 1;
    }

    // Blob files with no row (their transaction rolled back), past the grace period.
    report.orphan_blob_files_deleted = orphan_blob_files(conn, ctx, policy.blob_grace)?;

    // Transfers idle past their TTL.
    let stale: Vec<String> = {
        let mut st = conn
            .prepare_cached("SELECT transfer_id FROM transfers WHERE updated_at <= ?1")
            .fatal("preparing the gc transfer query")?;
        let rows = st
            .query_map([cutoff(now, policy.transfer_ttl)], |r| r.get(0))
            .fatal("querying stale transfers")?;
        rows.collect::<rusqlite::Result<_>>()
            .fatal("reading stale transfers")?
    };
    for id in stale {
        conn.prepare_cached("DELETE FROM transfers WHERE transfer_id = ?1")
            .and_then(|mut st| st.execute([&id]))
            .fatal("deleting a transfer")?;
        report.transfers_deleted += 1;
    }
    // Every transfer directory without a row (just deleted above, or left behind).
    let dirs = match std::fs::read_dir(ctx.shared.layout.files.transfers()) {
        Ok(d) => d
            .collect::<std::io::Result<Vec<_>>>()
            .fatal("listing transfers")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).fatal("listing transfers"),
    };
    for entry in dirs {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = conn
            .prepare_cached("SELECT 1 FROM transfers WHERE transfer_id = ?1")
            .and_then(|mut st| st.exists(params![name]))
            .fatal("looking up a transfer")?;
        if !known {
            ctx.trash(&entry.path())
                .fatal("removing a transfer directory")?;
        }
    }
    Ok(report)
}

/// Deletes a blob's row and moves its file to the trash; true if there was a file.
fn delete_blob(conn: &Connection, ctx: &mut OpCtx<'_>, sha: &str) -> Result<bool, OpError> {
    conn.prepare_cached("DELETE FROM blobs WHERE sha256 = ?1")
        .and_then(|mut st| st.execute([sha]))
        .fatal("deleting a blob row")?;
    match Sha256Digest::parse(sha) {
        Ok(digest) => ctx
            .trash(&ctx.shared.layout.files.blob_path(&digest))
            .fatal("removing a blob file"),
        Err(_) => Ok(false),
    }
}

/// Writer op: `discard_blob`, under the write lock, so no commit naming the blob can land
/// between the check and the delete.
pub(crate) fn discard(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    sha: &Sha256Digest,
) -> Result<bool, OpError> {
    let unnamed = conn
        .prepare_cached(&format!(
            "SELECT 1 FROM blobs WHERE sha256 = ?1 AND {UNNAMED}"
        ))
        .and_then(|mut st| st.exists([sha.as_str()]))
        .fatal("looking up a blob's references")?;
    if !unnamed {
        return Ok(false);
    }
    delete_blob(conn, ctx, sha.as_str())?;
    Ok(true)
}

/// Blob files without a row (their transaction rolled back) older than `grace`, moved to
/// the trash; returns how many.
fn orphan_blob_files(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    grace: Duration,
) -> Result<u64, OpError> {
    let files = ctx
        .shared
        .layout
        .files
        .blob_files(grace)
        .fatal("listing blobs")?;
    let mut deleted = 0;
    for (digest, path) in files {
        let known = conn
            .prepare_cached("SELECT 1 FROM blobs WHERE sha256 = ?1")
            .and_then(|mut st| st.exists([digest.as_str()]))
            .fatal("looking up a blob")?;
        if !known && ctx.trash(&path).fatal("removing an orphan blob file")? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes files in `<dir>/tmp` older than `ttl` (nothing refers to them, and an upload in
/// progress keeps its temp file's mtime fresh).
fn sweep_temp(shared: &Shared, ttl: Duration) -> std::io::Result<u64> {
    shared.layout.files.sweep_tmp(ttl)
}
