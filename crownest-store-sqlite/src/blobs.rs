//! Content-addressed blobs: streamed into `<dir>/tmp` while hashed and counted, checked
//! against their [`BlobExpect`] (core's [`blob_dir::receive_unsynced`]), fsynced unless the
//! same bytes are stored already, then renamed into
//! `<dir>/blobs/ab/cdef...` by the writer inside the transaction that records them (file
//! first, row second).

use std::fs::File;
use std::sync::Arc;

use crownest_core::store::blob_dir::{self, ReceiveError, WriteHook, ensure_dir, fsync_dir};
use crownest_core::store::{BlobExpect, BlobInfo, ByteStream};
use crownest_core::{Error, Sha256Digest};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::{Fatal as _, Fault, OpError, io};
use crate::layout::TempPath;
use crate::runs::{to_i64, to_u64};
use crate::writer::{OpCtx, Shared};

/// A blob received into a temp file, verified, not yet in place.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) temp: TempPath,
    pub(crate) info: BlobInfo,
    /// What is held besides the (fsynced) temp file when the same bytes were stored
    /// already at receive time.
    pub(crate) held: Held,
}

/// The bytes of a [`Received`] blob whose copy was stored already when it arrived: dropped,
/// unless `install` finds that copy gone and puts these in place.
#[derive(Debug)]
pub(crate) enum Held {
    /// A new blob: its temp file is fsynced, nothing else is held.
    Nothing,
    /// The temp file, not fsynced (yet).
    Unsynced(File),
    /// A small upload: no temp file was made, the bytes are in memory.
    Memory(bytes::Bytes),
}

/// Uploads up to this size are hashed in memory before any file is made for them
/// (`blob_dir::receive_small_unsynced`): re-running the same small archive then creates,
/// writes and deletes no temp file.
const SMALL_UPLOAD: usize = 256 * 1024;

/// Streams `data` into a temp file ([`blob_dir::receive`]: `too_large` as soon as the limit
/// is passed, size and digest once it ended), or, for an upload of at most
/// [`SMALL_UPLOAD`] bytes that are stored already, into memory only. On any error the temp
/// file is removed. A refusal or a failing client stream is logical; a failing temp-file
/// write is fatal.
pub(crate) async fn receive(
    shared: &Arc<Shared>,
    data: ByteStream,
    expect: BlobExpect<'_>,
) -> Result<Received, OpError> {
    let path = shared.layout.temp_path("blob");
    let temp = TempPath::new(path.clone());
    let faults = shared.clone();
    let hook: WriteHook = Arc::new(move || faults.faults.trip(Fault::BlobWrite));
    let fail = |e| match e {
        ReceiveError::Refused(e) => OpError::Logical(e),
        ReceiveError::Write { context, source } => OpError::Fatal(io(context, source)),
    };
    let received = blob_dir::receive_small_unsynced(&path, data, expect, &hook, SMALL_UPLOAD)
        .await
        .map_err(fail)?;
    let stored = |info: &BlobInfo| {
        std::fs::metadata(shared.layout.files.blob_path(&info.sha256))
            .is_ok_and(|m| m.len() == info.size_bytes)
    };
    let (info, file, stored) = match received {
        blob_dir::Small::Memory(info, bytes) => {
            // The same bytes stored already (a re-run of the same archive): nothing to write.
            if stored(&info) {
                return Ok(Received {
                    temp: temp.disarm(),
                    info,
                    held: Held::Memory(bytes),
                });
            }
            let file = write_temp(&path, bytes, &hook).await.map_err(fail)?;
            (info, file, false)
        }
        blob_dir::Small::File(info, file) => {
            let stored = stored(&info);
            (info, file, stored)
        }
    };
    // The same bytes stored already: the temp file will be dropped, so it needs no fsync.
    let held = if stored {
        Held::Unsynced(file)
    } else {
        blob_dir::sync_file(file).await.map_err(fail)?;
        Held::Nothing
    };
    Ok(Received { temp, info, held })
}

/// Writes `bytes` to a new file at `path` (not fsynced), after `hook`; removes it again if
/// that fails.
fn write_new(
    path: &std::path::Path,
    bytes: &[u8],
    hook: &dyn Fn() -> std::io::Result<()>,
) -> std::io::Result<File> {
    use std::io::Write as _;
    let mut file = File::options().write(true).create_new(true).open(path)?;
    let r = hook().and_then(|()| file.write_all(bytes));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r.map(|()| file)
}

/// Writes a small upload held in memory to its new temp file (not fsynced).
async fn write_temp(
    path: &std::path::Path,
    bytes: bytes::Bytes,
    hook: &WriteHook,
) -> Result<File, ReceiveError> {
    let path = path.to_path_buf();
    let hook = hook.clone();
    let written = tokio::task::spawn_blocking(move || write_new(&path, &bytes, &*hook))
        .await
        .map_err(|e| ReceiveError::Write {
            context: "writing a blob",
            source: std::io::Error::other(e),
        })?;
    written.map_err(|source| ReceiveError::Write {
        context: "writing a blob temp file",
        source,
    })
}

/// Writer op: puts a received blob in place and records it (refreshing `stored_at` when
/// the same bytes are already stored, so `gc` gives the new upload its grace period).
pub(crate) fn install(
    conn: &Connection,
    ctx: &mut OpCtx<'_>,
    received: Received,
    now_ms: i64,
) -> Result<BlobInfo, OpError> {
    let Received { temp, info, held } = received;
    let path = ctx.shared.layout.files.blob_path(&info.sha256);
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
        let temp = match held {
            // Stored when it was received, gone since (gc): the bytes held go in place.
            Held::Memory(bytes) => {
                let temp_path = ctx.shared.layout.temp_path("blob");
                let temp = TempPath::new(temp_path.clone());
                write_new(&temp_path, &bytes, &|| Ok(()))
                    .and_then(|f| f.sync_all())
                    .fatal("writing a blob")?;
                temp
            }
            // Likewise: this copy goes in place.
            Held::Unsynced(file) => {
                temp.check_present()?;
                file.sync_all().fatal("fsyncing a blob")?;
                temp
            }
            Held::Nothing => {
                temp.check_present()?;
                temp
            }
        };
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
    File::open(shared.layout.files.blob_path(sha)).fatal("opening a stored blob")
}
