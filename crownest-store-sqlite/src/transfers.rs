//! Staged transfers: a row per transfer, a row per received chunk, and the chunk bytes as
//! files `<dir>/transfers/<id>/<index>` (written to `<dir>/tmp`, fsynced, renamed in by the
//! writer inside the transaction that records the chunk).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use crownest_core::store::TransferRecord;
use crownest_core::store::blob_dir::{ensure_dir, fsync_dir};
use crownest_core::{Error, Result, RunId, TransferId};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::{Fatal as _, Fault, OpError, from_json, to_json};
use crate::layout::TempPath;
use crate::runs::{to_i64, to_u64};
use crate::writer::{OpCtx, Shared};

/// A transfer id safe to use as a directory name (ids that come from deserialized records
/// are not checked by their type).
pub(crate) fn checked(id: &TransferId) -> Result<()> {
    TransferId::parse(id.as_str()).map(|_| ())
}

/// `get_transfer`.
pub(crate) fn get(conn: &Connection, id: &TransferId) -> Result<Option<TransferRecord>, OpError> {
    let record: Option<String> = conn
        .prepare_cached("SELECT record FROM transfers WHERE transfer_id = ?1")
        .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)).optional())
        .fatal("reading a transfer")?;
    let Some(record) = record else {
        return Ok(None);
    };
    let mut t: TransferRecord = from_json("transfer", &record)?;
    let mut st = conn
        .prepare_cached("SELECT idx FROM chunks WHERE transfer_id = ?1 ORDER BY idx")
        .fatal("preparing the chunk query")?;
    let rows = st
        .query_map([id.as_str()], |r| r.get::<_, i64>(0))
        .fatal("querying chunks")?;
    t.received.clear();
    for idx in rows {
        t.received.insert(to_u64(idx.fatal("reading a chunk")?));
    }
    Ok(Some(t))
}

/// `list_transfers`: every transfer, or those of one run, oldest first.
pub(crate) fn list(conn: &Connection, run: Option<&RunId>) -> Result<Vec<TransferRecord>, OpError> {
    let ids: Vec<String> = {
        let mut st = conn
            .prepare_cached(
                "SELECT transfer_id FROM transfers WHERE ?1 IS NULL OR run_id = ?1
                 ORDER BY rowid",
            )
            .fatal("preparing the transfer list")?;
        let rows = st
            .query_map([run.map(RunId::as_str)], |r| r.get(0))
            .fatal("listing transfers")?;
        rows.collect::<rusqlite::Result<_>>()
            .fatal("reading the transfer list")?
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let id = TransferId::parse(&id).map_err(OpError::Logical)?;
        if let Some(t) = get(conn, &id)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Writer op: `create_transfer` (a transfer with the same id is replaced, chunks and all).
pub(crate) fn create(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    t: &TransferRecord,
    now_ms: i64,
) -> Result<(), OpError> {
    checked(&t.transfer_id)?;
    let mut stored = t.clone();
    stored.received.clear();
    let json = to_json("transfer", &stored)?;
    let replaced = conn
        .prepare_cached("DELETE FROM transfers WHERE transfer_id = ?1")
        .and_then(|mut st| st.execute([t.transfer_id.as_str()]))
        .fatal("replacing a transfer")?;
    if replaced > 0 {
        ctx.trash(&ctx.shared.layout.files.transfer_dir(&t.transfer_id))
            .fatal("removing replaced chunks")?;
    }
    conn.prepare_cached(
        "INSERT INTO transfers (transfer_id, run_id, record, updated_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            t.transfer_id.as_str(),
            t.run_id.as_str(),
            json,
            now_ms
        ])
    })
    .fatal("inserting a transfer")?;
    Ok(())
}

/// Writes chunk bytes to a fsynced temp file (on a blocking thread).
pub(crate) async fn write_temp(shared: &Arc<Shared>, data: Bytes) -> Result<TempPath, OpError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let path = shared.layout.temp_path("chunk");
        let temp = TempPath::new(path.clone());
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .fatal("creating a chunk temp file")?;
        shared
            .faults
            .trip(Fault::BlobWrite)
            .and_then(|()| f.write_all(&data))
            .fatal("writing a chunk temp file")?;
        f.sync_all().fatal("fsyncing a chunk")?;
        Ok(temp)
    })
    .await
    .map_err(|e| OpError::Fatal(Error::store("a chunk write task failed", e)))?
}

/// Writer op: puts a chunk in place and records it; returns the updated transfer.
pub(crate) fn install_chunk(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    id: &TransferId,
    index: u64,
    temp: TempPath,
    len: u64,
    now_ms: i64,
) -> Result<TransferRecord, OpError> {
    let Some(t) = get(conn, id)? else {
        return Err(Error::not_found("transfer", id).into());
    };
    if t.chunk_len(index) != Some(len) {
        return Err(Error::invalid("chunk", format!("chunk {index} has the wrong length")).into());
    }
    temp.check_present()?;
    let layout = &ctx.shared.layout;
    if t.received.contains(&index) {
        // Sent again: the same bytes are a no-op (the temp file goes), other bytes are
        // refused and the stored chunk stays.
        let stored = layout.files.chunk_path(id, index);
        let same = match temp.path() {
            Some(new) => same_bytes(&stored, new).fatal("comparing a chunk with the stored one")?,
            None => false,
        };
        if !same {
            return Err(t.chunk_conflict(index).into());
        }
        conn.prepare_cached("UPDATE transfers SET updated_at = ?2 WHERE transfer_id = ?1")
            .and_then(|mut st| st.execute(params![id.as_str(), now_ms]))
            .fatal("touching a transfer")?;
        return Ok(t);
    }
    let dir = layout.files.transfer_dir(id);
    ensure_dir(&dir).fatal("creating a transfer directory")?;
    temp.persist(&layout.files.chunk_path(id, index))
        .fatal("moving a chunk into place")?;
    fsync_dir(&dir).fatal("fsyncing a transfer directory")?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO chunks (transfer_id, idx, size) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut st| st.execute(params![id.as_str(), to_i64(index), to_i64(len)]))
    .fatal("recording a chunk")?;
    conn.prepare_cached("UPDATE transfers SET updated_at = ?2 WHERE transfer_id = ?1")
        .and_then(|mut st| st.execute(params![id.as_str(), now_ms]))
        .fatal("touching a transfer")?;
    let mut t = t;
    t.received.insert(index);
    Ok(t)
}

/// True when the two files hold the same bytes (read in blocks, never whole).
fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Writer op: `delete_transfer` (unknown ids are fine).
pub(crate) fn delete(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    id: &TransferId,
) -> Result<(), OpError> {
    conn.prepare_cached("DELETE FROM transfers WHERE transfer_id = ?1")
        .and_then(|mut st| st.execute([id.as_str()]))
        .fatal("deleting a transfer")?;
    ctx.trash(&ctx.shared.layout.files.transfer_dir(id))
        .fatal("removing a transfer's chunks")?;
    Ok(())
}

/// `open_transfer`: checks every chunk file is there with its length, then returns a
/// reader that opens them one after the other.
pub(crate) fn open(
    conn: &Connection,
    shared: &Shared,
    id: &TransferId,
) -> Result<ChunkReader, OpError> {
    let Some(t) = get(conn, id)? else {
        return Err(Error::not_found("transfer", id).into());
    };
    if !t.is_complete() {
        return Err(Error::invalid("transfer", "chunks are missing").into());
    }
    let mut files = VecDeque::new();
    for index in 0..t.chunk_count() {
        let path = shared.layout.files.chunk_path(id, index);
        let want = t.chunk_len(index).unwrap_or(0);
        let got = std::fs::metadata(&path)
            .fatal("checking a chunk file")?
            .len();
        if got != want {
            return Err(OpError::Fatal(Error::Store {
                message: format!(
                    "chunk file {} has {got} bytes, expected {want}",
                    path.display()
                ),
                source: None,
            }));
        }
        files.push_back(path);
    }
    Ok(ChunkReader {
        files,
        current: None,
    })
}

/// The chunks of a transfer, concatenated in order.
#[derive(Debug)]
pub(crate) struct ChunkReader {
    files: VecDeque<PathBuf>,
    current: Option<File>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(f) = &mut self.current {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.current = None;
            }
            match self.files.pop_front() {
                None => return Ok(0),
                Some(p) => self.current = Some(File::open(p)?),
            }
        }
    }
}
