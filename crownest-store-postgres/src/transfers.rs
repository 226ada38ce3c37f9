//! Staged transfers: a row per transfer, a row per received chunk, the chunk bytes in the
//! blob backend (staged outside any transaction, moved into place while the transfer's row
//! is locked, recorded in the same transaction).

use std::collections::BTreeMap;

use bytes::Bytes;
use crownest_core::store::{BlobReader, TransferRecord};
use crownest_core::{Error, Result, RunId, TransferId};
use deadpool_postgres::{GenericClient, Object};

use crate::blobs::{BlobBackend, to_i64, to_u64};
use crate::error::{commit_failed, db, from_json, to_json};
use crate::runs::{execute, query};

/// A transfer id safe to use as a directory name (ids that come from deserialized records
/// are not checked by their type).
pub(crate) fn checked(id: &TransferId) -> Result<()> {
    TransferId::parse(id.as_str()).map(|_| ())
}

/// The transfer row's record with `received` filled from the chunk rows.
async fn with_chunks(c: &impl GenericClient, record: &str) -> Result<TransferRecord> {
    let mut t: TransferRecord = from_json("transfer", record)?;
    let rows = query(
        c,
        "reading chunks",
        "SELECT idx FROM chunks WHERE transfer_id = $1",
        &[&t.transfer_id.as_str()],
    )
    .await?;
    t.received = rows.iter().map(|r| to_u64(r.get(0))).collect();
    Ok(t)
}

/// `get_transfer` (`lock`: `FOR UPDATE`, inside a transaction).
pub(crate) async fn get(
    c: &impl GenericClient,
    id: &TransferId,
    lock: bool,
) -> Result<Option<TransferRecord>> {
    let sql = if lock {
        "SELECT record FROM transfers WHERE transfer_id = $1 FOR UPDATE"
    } else {
        "SELECT record FROM transfers WHERE transfer_id = $1"
    };
    let rows = query(c, "reading a transfer", sql, &[&id.as_str()]).await?;
    match rows.first() {
        Some(r) => Ok(Some(with_chunks(c, r.get(0)).await?)),
        None => Ok(None),
    }
}

/// `list_transfers`: every transfer, or those of one run, oldest first (two queries).
pub(crate) async fn list(
    c: &impl GenericClient,
    run: Option<&RunId>,
) -> Result<Vec<TransferRecord>> {
    let run = run.map(RunId::as_str);
    let rows = query(
        c,
        "listing transfers",
        "SELECT record FROM transfers WHERE $1::text IS NULL OR run_id = $1
         ORDER BY created_at, transfer_id",
        &[&run],
    )
    .await?;
    let chunks = query(
        c,
        "listing chunks",
        "SELECT c.transfer_id, c.idx FROM chunks c JOIN transfers t USING (transfer_id)
         WHERE $1::text IS NULL OR t.run_id = $1",
        &[&run],
    )
    .await?;
    let mut received: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &chunks {
        received.entry(r.get(0)).or_default().push(to_u64(r.get(1)));
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut t: TransferRecord = from_json("transfer", r.get(0))?;
        t.received = received
            .remove(t.transfer_id.as_str())
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.push(t);
    }
    Ok(out)
}

/// `create_transfer` (a transfer with the same id is replaced, chunks and all).
pub(crate) async fn create(
    client: &mut Object,
    blobs: &dyn BlobBackend,
    t: &TransferRecord,
) -> Result<()> {
    checked(&t.transfer_id)?;
    let mut stored = t.clone();
    stored.received.clear();
    let json = to_json("transfer", &stored)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting create_transfer", e))?;
    let replaced = execute(
        &tx,
        "replacing a transfer",
        "DELETE FROM transfers WHERE transfer_id = $1",
        &[&t.transfer_id.as_str()],
    )
    .await?;
    execute(
        &tx,
        "inserting a transfer",
        "INSERT INTO transfers (transfer_id, run_id, record) VALUES ($1, $2, $3)",
        &[&t.transfer_id.as_str(), &t.run_id.as_str(), &json],
    )
    .await?;
    if replaced > 0 {
        // Under the new row's lock: no chunk of the new transfer can land meanwhile.
        blobs.delete_chunks(&t.transfer_id).await?;
    }
    tx.commit()
        .await
        .map_err(|e| commit_failed("committing create_transfer", e))
}

/// `put_chunk`: stage the bytes, then lock the transfer row, move them into place and
/// record the chunk in one transaction; returns the updated transfer.
pub(crate) async fn put_chunk(
    client: &mut Object,
    blobs: &dyn BlobBackend,
    id: &TransferId,
    index: u64,
    data: Bytes,
) -> Result<TransferRecord> {
    checked(id)?;
    let len = data.len() as u64;
    let check_len = |t: &TransferRecord| {
        if t.chunk_len(index) == Some(len) {
            Ok(())
        } else {
            Err(Error::invalid(
                "chunk",
                format!("chunk {index} has the wrong length"),
            ))
        }
    };
    // Refuse early, before writing anything.
    let t = get(&*client, id, false)
        .await?
        .ok_or_else(|| Error::not_found("transfer", id))?;
    check_len(&t)?;
    let sent = data.clone();
    let staged = blobs.stage_chunk(data).await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting put_chunk", e))?;
    let mut t = get(&tx, id, true)
        .await?
        .ok_or_else(|| Error::not_found("transfer", id))?;
    check_len(&t)?;
    if t.received.contains(&index) {
        // Sent again (under the transfer's row lock): the same bytes are a no-op, other
        // bytes are refused and the stored chunk stays. The staged copy is dropped.
        drop(staged);
        if blobs.read_chunk(id, index).await? != sent {
            return Err(t.chunk_conflict(index));
        }
        execute(
            &tx,
            "touching a transfer",
            "UPDATE transfers SET updated_at = now() WHERE transfer_id = $1",
            &[&id.as_str()],
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| commit_failed("committing put_chunk", e))?;
        return Ok(t);
    }
    blobs.install_chunk(staged, id, index).await?;
    execute(
        &tx,
        "recording a chunk",
        "INSERT INTO chunks (transfer_id, idx, size) VALUES ($1, $2, $3)
         ON CONFLICT (transfer_id, idx) DO UPDATE SET size = excluded.size",
        &[&id.as_str(), &to_i64(index), &to_i64(len)],
    )
    .await?;
    execute(
        &tx,
        "touching a transfer",
        "UPDATE transfers SET updated_at = now() WHERE transfer_id = $1",
        &[&id.as_str()],
    )
    .await?;
    tx.commit()
        .await
        .map_err(|e| commit_failed("committing put_chunk", e))?;
    t.received.insert(index);
    Ok(t)
}

/// `open_transfer`: every chunk recorded, then a reader over their bytes in order.
pub(crate) async fn open(
    c: &impl GenericClient,
    blobs: &dyn BlobBackend,
    id: &TransferId,
) -> Result<BlobReader> {
    checked(id)?;
    let t = get(c, id, false)
        .await?
        .ok_or_else(|| Error::not_found("transfer", id))?;
    if !t.is_complete() {
        return Err(Error::invalid("transfer", "chunks are missing"));
    }
    let lens = (0..t.chunk_count())
        .map(|i| t.chunk_len(i).unwrap_or(0))
        .collect();
    blobs.open_chunks(id, lens).await
}

/// `delete_transfer`: the row (and chunk rows) first, then the bytes (unknown ids are fine).
/// A crash in between leaves bytes without a row, which `gc` removes.
pub(crate) async fn delete(
    c: &impl GenericClient,
    blobs: &dyn BlobBackend,
    id: &TransferId,
) -> Result<()> {
    if checked(id).is_err() {
        return Ok(()); // no such transfer can exist
    }
    execute(
        c,
        "deleting a transfer",
        "DELETE FROM transfers WHERE transfer_id = $1",
        &[&id.as_str()],
    )
    .await?;
    blobs.delete_chunks(id).await
}
