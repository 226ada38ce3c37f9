//! [`BlobDir`]: content-addressed blobs and staged-transfer chunks in a directory on disk,
//! shared by the SQLite store and the PostgreSQL store's local blob backend (each keeps its
//! rows, locks and transactions; this is only the bytes and their layout).
//!
//! ```text
//! <dir>/blobs/ab/cdef...             content-addressed blobs (sha256: 2 + 62 hex chars)
//! <dir>/transfers/<transferId>/<i>   chunk i of a staged transfer
//! <dir>/tmp/                         uploads and chunks in flight, files being moved away
//! ```
//!
//! Bytes stream into `tmp/` while hashed and counted ([`receive`]: 1 MiB buffers written on
//! a blocking thread, never a whole blob in memory), are checked and fsynced, then renamed
//! to their address with the directory fsynced ([`ensure_dir`], [`fsync_dir`]). What a name
//! in `blobs/` does not parse as a digest is never touched ([`BlobDir::blob_files`]).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, RejectReason};
use crate::ids::{Sha256Digest, TransferId};

use super::{BlobExpect, BlobInfo, ByteStream, check_blob_expectations};

/// Bytes gathered before one write + hash on a blocking thread.
const WRITE_BUFFER: usize = 1024 * 1024;

/// The paths of one blob directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDir {
    root: PathBuf,
    blobs: PathBuf,
    transfers: PathBuf,
    tmp: PathBuf,
}

impl BlobDir {
    /// The layout under `root` (nothing is created: see [`create`](Self::create)).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            blobs: root.join("blobs"),
            transfers: root.join("transfers"),
            tmp: root.join("tmp"),
        }
    }

    /// Creates the directories (and makes their entries durable). When all of them exist
    /// already (every open of a store but the first), nothing is written and nothing is
    /// fsynced: each was made durable by the call that created it.
    pub fn create(&self) -> std::io::Result<()> {
        let dirs = [&self.blobs, &self.transfers, &self.tmp];
        if dirs.iter().all(|d| d.is_dir()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root)?;
        for d in dirs {
            std::fs::create_dir_all(d)?;
        }
        fsync_dir(&self.root)
    }

    /// `<dir>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<dir>/transfers`.
    pub fn transfers(&self) -> &Path {
        &self.transfers
    }

    /// `<dir>/blobs/ab/cdef...`.
    pub fn blob_path(&self, sha: &Sha256Digest) -> PathBuf {
        let s = sha.as_str();
        self.blobs.join(&s[..2]).join(&s[2..])
    }

    /// `<dir>/transfers/<id>`.
    pub fn transfer_dir(&self, id: &TransferId) -> PathBuf {
        self.transfers.join(id.as_str())
    }

    /// `<dir>/transfers/<id>/<index>`.
    pub fn chunk_path(&self, id: &TransferId, index: u64) -> PathBuf {
        self.transfer_dir(id).join(index.to_string())
    }

    /// A fresh, unused path in `<dir>/tmp`.
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        self.tmp
            .join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The blob files last modified at least `age` ago: digest and path. Only files whose
    /// name (prefix directory + file name) is exactly a lowercase sha256: anything else in
    /// `blobs/` is not ours.
    pub fn blob_files(&self, age: Duration) -> std::io::Result<Vec<(Sha256Digest, PathBuf)>> {
        let mut out = Vec::new();
        for prefix in entries(&self.blobs)? {
            if !prefix.file_type()?.is_dir() {
                continue;
            }
            for file in entries(&prefix.path())? {
                let name = format!(
                    "{}{}",
                    prefix.file_name().to_string_lossy(),
                    file.file_name().to_string_lossy()
                );
                let Ok(digest) = Sha256Digest::parse(&name) else {
                    continue;
                };
                if digest.as_str() == name && file.metadata().is_ok_and(|m| older_than(&m, age)) {
                    out.push((digest, file.path()));
                }
            }
        }
        Ok(out)
    }

    /// Deletes what `<dir>/tmp` holds that was last modified at least `age` ago (nothing
    /// refers to it, and an upload in progress keeps its temp file's mtime fresh). Returns
    /// how many entries were deleted.
    pub fn sweep_tmp(&self, age: Duration) -> std::io::Result<u64> {
        let mut deleted = 0;
        for entry in entries(&self.tmp)? {
            let Ok(meta) = entry.metadata() else { continue };
            if !older_than(&meta, age) {
                continue;
            }
            let r = if meta.is_dir() {
                std::fs::remove_dir_all(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            match r {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (one level) if missing, making its entry durable in its parent.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => match dir.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when `meta`'s mtime is at least `age` ago.
pub fn older_than(meta: &std::fs::Metadata, age: Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|d| d >= age)
}

/// Lists a directory; a missing one is empty.
fn entries(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Why [`receive`] failed: the upload's fault, or the store's.
#[derive(Debug)]
pub enum ReceiveError {
    /// The client's stream failed (`Error::Io`) or the bytes do not meet the expectations
    /// (`Error::ArchiveRejected`: too large, size or digest mismatch). The store is fine.
    Refused(Error),
    /// Creating, writing or fsyncing the temp file failed: the store's own fault.
    Write {
        /// What was being done.
        context: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Called on the blocking thread before each write to the temp file (a store's fault
/// injection; `|| Ok(())` otherwise).
pub type WriteHook = std::sync::Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

struct Sink {
    file: File,
    hasher: Sha256,
}

fn write_error(context: &'static str) -> impl FnOnce(std::io::Error) -> ReceiveError {
    move |source| ReceiveError::Write { context, source }
}

/// Hashes and writes `buf` on a blocking thread.
async fn flush(sink: Sink, buf: Bytes, hook: &WriteHook) -> Result<Sink, ReceiveError> {
    let hook = hook.clone();
    let (sink, r) = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        sink.hasher.update(&buf);
        let r = hook().and_then(|()| sink.file.write_all(&buf));
        (sink, r)
    })
    .await
    .map_err(|e| write_error("writing a blob")(std::io::Error::other(e)))?;
    r.map_err(write_error("writing a blob temp file"))?;
    Ok(sink)
}

/// Streams `data` into a new file at `path` (which must not exist), hashing and counting:
/// `too_large` as soon as more than `expect.max_bytes` arrived, size and digest checked
/// once it ended ([`check_blob_expectations`]), then the file is fsynced. On any error the
/// file is removed.
pub async fn receive(
    path: &Path,
    data: ByteStream,
    expect: BlobExpect<'_>,
    hook: &WriteHook,
) -> Result<BlobInfo, ReceiveError> {
    let (info, file) = receive_unsynced(path, data, expect, hook).await?;
    if let Err(e) = sync_file(file).await {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(info)
}

/// [`receive`] without the final fsync, for a store that first looks whether the same
/// bytes are stored already (then the temp file is dropped, and fsyncing it was wasted:
/// every re-upload of the same archive paid one). Returns the open file too: the caller
/// must [`sync_file`] it before it renames it into place.
pub async fn receive_unsynced(
    path: &Path,
    data: ByteStream,
    expect: BlobExpect<'_>,
    hook: &WriteHook,
) -> Result<(BlobInfo, File), ReceiveError> {
    let r = receive_inner(path, data, expect, hook, BytesMut::new(), 0).await;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Fsyncs `file` (on a blocking thread).
pub async fn sync_file(file: File) -> Result<(), ReceiveError> {
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| write_error("fsyncing a blob")(std::io::Error::other(e)))?
        .map_err(write_error("fsyncing a blob"))
}

/// What [`receive_small_unsynced`] received.
#[derive(Debug)]
pub enum Small {
    /// The whole stream, no larger than the memory limit: checked, hashed, no file made.
    Memory(BlobInfo, Bytes),
    /// A larger stream, in the new file at `path` as [`receive_unsynced`] leaves it.
    File(BlobInfo, File),
}

/// [`receive_unsynced`] for a store that looks whether the same bytes are stored already
/// before it writes them: a stream of at most `memory_limit` bytes is hashed and checked in
/// memory, and no file is created for it (a re-upload of the same small archive then costs
/// no file creation, write and deletion); a longer one goes to the file at `path` from its
/// first bytes on. The same refusals as [`receive_unsynced`], at the same points.
pub async fn receive_small_unsynced(
    path: &Path,
    mut data: ByteStream,
    expect: BlobExpect<'_>,
    hook: &WriteHook,
    memory_limit: usize,
) -> Result<Small, ReceiveError> {
    let mut buf = BytesMut::new();
    let mut size: u64 = 0;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ReceiveError::Refused(Error::io("reading upload", e)))?;
        if size + chunk.len() as u64 > expect.max_bytes {
            return Err(too_large(expect.max_bytes));
        }
        size += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        if buf.len() > memory_limit {
            let r = receive_inner(path, data, expect, hook, buf, size).await;
            if r.is_err() {
                let _ = std::fs::remove_file(path);
            }
            let (info, file) = r?;
            return Ok(Small::File(info, file));
        }
    }
    let bytes = buf.freeze();
    let info = BlobInfo {
        sha256: Sha256Digest::from_bytes(&Sha256::digest(&bytes).into()),
        size_bytes: size,
    };
    check_blob_expectations(&info, expect).map_err(ReceiveError::Refused)?;
    Ok(Small::Memory(info, bytes))
}

fn too_large(max_bytes: u64) -> ReceiveError {
    ReceiveError::Refused(Error::rejected(
        RejectReason::TooLarge,
        None,
        format!("upload exceeds the limit of {max_bytes} bytes"),
    ))
}

/// Streams into a new file at `path`: `first` (the stream's first `size` bytes, already
/// counted), then the rest of `data`.
async fn receive_inner(
    path: &Path,
    mut data: ByteStream,
    expect: BlobExpect<'_>,
    hook: &WriteHook,
    first: BytesMut,
    mut size: u64,
) -> Result<(BlobInfo, File), ReceiveError> {
    let open_path = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || {
        File::options()
            .write(true)
            .create_new(true)
            .open(&open_path)
    })
    .await
    .map_err(|e| write_error("creating a blob temp file")(std::io::Error::other(e)))?
    .map_err(write_error("creating a blob temp file"))?;
    let mut sink = Sink {
        file,
        hasher: Sha256::new(),
    };
    let mut buf = first;
    if buf.len() >= WRITE_BUFFER {
        sink = flush(sink, buf.split().freeze(), hook).await?;
    }
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ReceiveError::Refused(Error::io("reading upload", e)))?;
        if size + chunk.len() as u64 > expect.max_bytes {
            return Err(too_large(expect.max_bytes));
        }
        size += chunk.len() as u64;
        if buf.is_empty() && chunk.len() >= WRITE_BUFFER {
            sink = flush(sink, chunk, hook).await?;
            continue;
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_BUFFER {
            sink = flush(sink, buf.split().freeze(), hook).await?;
        }
    }
    if !buf.is_empty() {
        sink = flush(sink, buf.freeze(), hook).await?;
    }
    let info = BlobInfo {
        sha256: Sha256Digest::from_bytes(&sink.hasher.finalize().into()),
        size_bytes: size,
    };
    check_blob_expectations(&info, expect).map_err(ReceiveError::Refused)?;
    Ok((info, sink.file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::stream;

    use super::*;
    use crate::run::ArchiveDescriptor;

    fn stream_of(parts: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(stream::iter(
            parts
                .into_iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    fn no_hook() -> WriteHook {
        std::sync::Arc::new(|| Ok(()))
    }

    /// A created blob directory in a fresh temp dir, and a temp path in it.
    fn blob_dir() -> (tempfile::TempDir, BlobDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dir = BlobDir::new(t.path());
        dir.create().unwrap();
        let temp = dir.temp_path("blob");
        (t, dir, temp)
    }

    #[tokio::test]
    async fn receives_hashes_and_lays_out_by_digest() {
        let (t, dir, temp) = blob_dir();
        let expect = BlobExpect {
            descriptor: None,
            max_bytes: 100,
        };
        let info = receive(
            &temp,
            stream_of(vec![b"hello ", b"world"]),
            expect,
            &no_hook(),
        )
        .await
        .unwrap();
        assert_eq!(info.sha256, Sha256Digest::of(b"hello world"));
        assert_eq!(info.size_bytes, 11);
        assert_eq!(std::fs::read(&temp).unwrap(), b"hello world");
        let to = dir.blob_path(&info.sha256);
        ensure_dir(to.parent().unwrap()).unwrap();
        std::fs::rename(&temp, &to).unwrap();
        assert!(to.starts_with(t.path().join("blobs").join(&info.sha256.as_str()[..2])));
        // Old enough (age zero): listed by digest; a foreign file is not.
        std::fs::write(to.parent().unwrap().join("not-a-digest"), b"x").unwrap();
        let files = dir.blob_files(Duration::ZERO).unwrap();
        assert_eq!(files, vec![(info.sha256.clone(), to.clone())]);
        assert!(
            dir.blob_files(Duration::from_secs(3600))
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_small_stream_stays_in_memory_and_a_larger_one_goes_to_the_file() {
        let (_t, _dir, temp) = blob_dir();
        let expect = BlobExpect {
            descriptor: None,
            max_bytes: 100,
        };
        let got = receive_small_unsynced(
            &temp,
            stream_of(vec![b"hello ", b"world"]),
            expect,
            &no_hook(),
            11,
        )
        .await
        .unwrap();
        let Small::Memory(info, bytes) = got else {
            panic!("{got:?}")
        };
        assert_eq!(info.sha256, Sha256Digest::of(b"hello world"));
        assert_eq!((info.size_bytes, &bytes[..]), (11, &b"hello world"[..]));
        assert!(!temp.exists(), "no file made");
        // One byte over the limit: the file, with every byte, the first ones included.
        let got = receive_small_unsynced(
            &temp,
            stream_of(vec![b"hello ", b"world", b"!"]),
            expect,
            &no_hook(),
            11,
        )
        .await
        .unwrap();
        let Small::File(info, _) = got else {
            panic!("{got:?}")
        };
        assert_eq!(info.sha256, Sha256Digest::of(b"hello world!"));
        assert_eq!(std::fs::read(&temp).unwrap(), b"hello world!");
        std::fs::remove_file(&temp).unwrap();
    }

    #[tokio::test]
    async fn refusals_keep_nothing_and_say_why() {
        let (_t, _dir, temp) = blob_dir();
        let declared = ArchiveDescriptor {
            size_bytes: 4,
            sha256: Sha256Digest::of(b"abce"),
        };
        let too_small = BlobExpect {
            descriptor: None,
            max_bytes: 3,
        };
        let wrong = BlobExpect {
            descriptor: Some(&declared),
            max_bytes: 100,
        };
        let any = BlobExpect {
            descriptor: None,
            max_bytes: 100,
        };
        let failing: WriteHook = std::sync::Arc::new(|| Err(std::io::Error::other("disk full")));
        // `receive`, and `receive_small_unsynced` past its memory limit and within it.
        for small in [None, Some(1), Some(100)] {
            let refused = |expect, hook| {
                let temp = temp.clone();
                async move {
                    let parts = stream_of(vec![b"ab", b"cd"]);
                    match small {
                        None => receive(&temp, parts, expect, &hook).await.map(|_| ()),
                        Some(limit) => receive_small_unsynced(&temp, parts, expect, &hook, limit)
                            .await
                            .map(|_| ()),
                    }
                    .unwrap_err()
                }
            };
            for (expect, reason) in [
                (too_small, RejectReason::TooLarge),
                (wrong, RejectReason::DigestMismatch),
            ] {
                let e = refused(expect, no_hook()).await;
                assert!(
                    matches!(&e, ReceiveError::Refused(Error::ArchiveRejected { reason: r, .. }) if *r == reason),
                    "{small:?}: {e:?}"
                );
                assert!(!temp.exists());
            }
            // A failing write is the store's fault (nothing is written within the limit).
            if small != Some(100) {
                let e = refused(any, failing.clone()).await;
                assert!(matches!(e, ReceiveError::Write { .. }), "{small:?}: {e:?}");
                assert!(!temp.exists());
            }
        }
    }

    #[test]
    fn the_sweep_removes_only_what_is_old_enough() {
        let t = tempfile::tempdir().unwrap();
        let dir = BlobDir::new(t.path());
        dir.create().unwrap();
        std::fs::write(dir.temp_path("blob"), b"x").unwrap();
        std::fs::create_dir(dir.temp_path("trash")).unwrap();
        assert_eq!(dir.sweep_tmp(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(dir.sweep_tmp(Duration::ZERO).unwrap(), 2);
        assert_eq!(std::fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }
}
