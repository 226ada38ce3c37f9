//! Content-addressed blobs: streamed into `<dir>/tmp` while hashed and counted, checked
//! against their [`BlobExpect`], fsynced, then renamed into `<dir>/blobs/ab/cdef...` by the
//! writer inside the transaction that records them (file first, row second).

use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use crownest_core::memory::check_blob_expectations;
use crownest_core::store::{BlobExpect, BlobInfo, ByteStream};
use crownest_core::{Error, RejectReason, Sha256Digest};
use futures::StreamExt as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::error::{Fatal as _, Fault, OpError};
use crate::layout::{TempPath, ensure_dir, fsync_dir};
use crate::runs::{to_i64, to_u64};
use crate::writer::{OpCtx, Shared};

/// Bytes gathered before one write + hash on a blocking thread.
const WRITE_BUFFER: usize = 1024 * 1024;

/// A blob received into a temp file, verified and fsynced, not yet in place.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) temp: TempPath,
    pub(crate) info: BlobInfo,
}

struct Sink {
    file: File,
    hasher: Sha256,
}

/// Hashes and writes `buf` on a blocking thread.
async fn flush(shared: &Arc<Shared>, sink: Sink, buf: Bytes) -> Result<Sink, OpError> {
    let shared = shared.clone();
    let (sink, r) = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        sink.hasher.update(&buf);
        let r = shared
            .faults
            .trip(Fault::BlobWrite)
            .and_then(|()| sink.file.write_all(&buf));
        (sink, r)
    })
    .await
    .map_err(|e| OpError::Fatal(Error::store("a blob write task failed", e)))?;
    r.fatal("writing a blob temp file")?;
    Ok(sink)
}

/// Streams `data` into a temp file, enforcing `expect` while it streams (`too_large` as
/// soon as the limit is passed) and once it ended (size, digest). On any error the temp file
/// is removed. Errors reading `data` are `Error::Io` (logical: the client's stream failed);
/// errors writing the temp file are fatal.
pub(crate) async fn receive(
    shared: &Arc<Shared>,
    mut data: ByteStream,
    expect: BlobExpect<'_>,
) -> Result<Received, OpError> {
    let path = shared.layout.temp_path("blob");
    let temp = TempPath::new(path.clone());
    let file = tokio::task::spawn_blocking(move || {
        File::options().write(true).create_new(true).open(&path)
    })
    .await
    .map_err(|e| OpError::Fatal(Error::store("a blob write task failed", e)))?
    .fatal("creating a blob temp file")?;
    let mut sink = Sink {
        file,
        hasher: Sha256::new(),
    };
    let mut size: u64 = 0;
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| Error::io("reading upload", e))?;
        if size + chunk.len() as u64 > expect.max_bytes {
            return Err(Error::rejected(
                RejectReason::TooLarge,
                None,
                format!("upload exceeds the limit of {} bytes", expect.max_bytes),
            )
            .into());
        }
        size += chunk.len() as u64;
        if buf.is_empty() && chunk.len() >= WRITE_BUFFER {
            sink = flush(shared, sink, chunk).await?;
            continue;
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_BUFFER {
            sink = flush(shared, sink, buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink = flush(shared, sink, buf.freeze()).await?;
    }
    let info = BlobInfo {
        sha256: Sha256Digest::from_bytes(&sink.hasher.finalize().into()),
        size_bytes: size,
    };
    check_blob_expectations(&info, expect)?;
    let file = sink.file;
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| OpError::Fatal(Error::store("a blob fsync task failed", e)))?
        .fatal("fsyncing a blob")?;
    Ok(Received { temp, info })
}

/// Writer op: puts a received blob in place and records it (refreshing `stored_at` when
/// the same bytes are already stored, so `gc` gives the new upload its grace period).
pub(crate) fn install(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    received: Received,
    now_ms: i64,
) -> Result<BlobInfo, OpError> {
    let Received { temp, info } = received;
    let path = ctx.shared.layout.blob_path(&info.sha256);
    let known: Option<i64> = conn
        .prepare_cached("SELECT size FROM blobs WHERE sha256 = ?1")
        .and_then(|mut st| {
            st.query_row([info.sha256.as_str()], |r| r.get(0))
                .optional()
        })
        .fatal("looking up a blob")?;
    let in_place = known.is_some_and(|s| to_u64(s) == info.size_bytes)
        && std::fs::metadata(&path).is_ok_and(|m| m.len() == info.size_bytes);
    if in_place {
        drop(temp);
    } else {
        temp.check_present()?;
        if let Some(dir) = path.parent() {
            ensure_dir(dir).fatal("creating a blob directory")?;
        }
        temp.persist(&path).fatal("moving a blob into place")?;
        if let Some(dir) = path.parent() {
            fsync_dir(dir).fatal("fsyncing a blob directory")?;
        }
    }
    conn.prepare_cached(
        "INSERT INTO blobs (sha256, size, stored_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, stored_at = excluded.stored_at",
    )
    .and_then(|mut st| {
        st.execute(params![
            info.sha256.as_str(),
            to_i64(info.size_bytes),
            now_ms
        ])
    })
    .fatal("recording a blob")?;
    Ok(info)
}

/// `has_blob`.
pub(crate) fn size(conn: &Connection, sha: &Sha256Digest) -> Result<Option<u64>, OpError> {
    let size: Option<i64> = conn
        .prepare_cached("SELECT size FROM blobs WHERE sha256 = ?1")
        .and_then(|mut st| st.query_row([sha.as_str()], |r| r.get(0)).optional())
        .fatal("looking up a blob")?;
    Ok(size.map(to_u64))
}

/// `open_blob`: the row says it exists; the file must be there.
pub(crate) fn open(
    conn: &Connection,
    shared: &Shared,
    sha: &Sha256Digest,
) -> Result<File, OpError> {
    if size(conn, sha)?.is_none() {
        return Err(Error::not_found("blob", sha).into());
    }
    File::open(shared.layout.blob_path(sha)).fatal("opening a stored blob")
}
