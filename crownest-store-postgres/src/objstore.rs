//! [`ObjectStoreBlobs`]: blob and chunk bytes in an object store through the `object_store`
//! crate (`file://` → `LocalFileSystem`; `s3://`, `gs://`, `az://` behind cargo features).
//!
//! ```text
//! <prefix>/blobs/ab/cdef...             content-addressed blobs (sha256: 2 + 62 hex chars)
//! <prefix>/transfers/<transferId>/<i>   chunk i of a staged transfer, one object each
//! <prefix>/tmp/<kind>-<uuid>            uploads and chunks in flight
//! ```
//!
//! The same layout as the directory backend, so a directory can be opened as a plain path
//! or as `file:///that/dir`.
//!
//! * **In**: the upload is hashed and counted as it arrives, gathered into parts of
//!   [`PART_SIZE`]; a blob that ends within the first part is written with one `put`, a
//!   larger one with a multipart upload to `tmp/` holding at most [`PARTS_IN_FLIGHT`] parts
//!   in flight plus the one being filled: never the whole blob in memory. Over `max_bytes`,
//!   a failed stream, or a size/digest mismatch (checked before the upload is completed)
//!   aborts the upload: no object is left.
//! * **Install**: `rename_if_not_exists` from `tmp/` to the blob's address (when the store
//!   supports it; an existing object there holds the same bytes, and the staged copy is
//!   deleted), else `rename` (copy + delete on cloud stores: replacing equal bytes). Done
//!   while the caller holds the blob's advisory lock and before the row is written.
//! * **Out**: `get` as a stream, adapted to the blocking [`BlobReader`] by a pump thread that
//!   passes at most [`READ_AHEAD`] chunks through a bounded channel (for `LocalFileSystem`
//!   the open file itself). The transfer's chunks are streamed one after the other.
//! * **Chunks** are objects (`transfers/<id>/<i>`): any host sharing the bucket can receive
//!   any chunk, and any host can read the whole transfer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::error::RejectReason;
use crownest_core::store::{BlobExpect, BlobInfo, BlobReader, ByteStream, check_blob_expectations};
use crownest_core::{Error, Result, Sha256Digest, TransferId};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{GetResultPayload, MultipartUpload, ObjectStore, ObjectStoreExt as _};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::blob_url::OpenedStore;
use crate::blobs::{BlobBackend, Staged};

/// Bytes in one part of a multipart upload (S3 wants at least 5 MiB for every part but the
/// last, and at most 10 000 parts: blobs up to 80 GB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload being sent at once; the next part waits for one to finish.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Chunks a blob reader's pump may fetch ahead of the reader.
pub const READ_AHEAD: usize = 2;

/// What the object-store backend has done since the store opened (for operators and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobStreamStats {
    /// Blobs written with one `put` (they fit in one part).
    pub single_puts: u64,
    /// Blobs written with a multipart upload.
    pub multipart_uploads: u64,
    /// Parts sent by multipart uploads.
    pub parts_uploaded: u64,
    /// The most upload bytes one `put_blob` held at once: the part being filled plus the
    /// parts in flight. At most `(PARTS_IN_FLIGHT + 1) * PART_SIZE`, whatever the blob's size.
    pub peak_buffered_bytes: u64,
    /// Uploads aborted (refused bytes, failed streams, failed writes): nothing kept.
    pub aborted_uploads: u64,
    /// The part size in use ([`PART_SIZE`]).
    pub part_size: u64,
    /// Parts in flight at most ([`PARTS_IN_FLIGHT`]).
    pub parts_in_flight: u64,
}

#[derive(Debug, Default)]
struct Stats {
    single_puts: AtomicU64,
    multipart_uploads: AtomicU64,
    parts_uploaded: AtomicU64,
    peak_buffered_bytes: AtomicU64,
    aborted_uploads: AtomicU64,
}

/// Blob bytes in an object store.
pub(crate) struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    root: Path,
    shown: String,
    local_dir: Option<PathBuf>,
    /// Set once the store answered that it cannot rename-if-not-exists.
    no_create_rename: AtomicBool,
    stats: Stats,
}

impl std::fmt::Debug for ObjectStoreBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBlobs")
            .field("url", &self.shown)
            .field("prefix", &self.root.as_ref())
            .finish_non_exhaustive()
    }
}

/// Why an upload failed: the upload's fault (refused) or the store's.
enum Failure {
    Refused(Error),
    Store(&'static str, object_store::Error),
}

/// The parts of one multipart upload in flight.
struct Parts {
    upload: Box<dyn MultipartUpload>,
    tasks: JoinSet<object_store::Result<()>>,
    sent: u64,
}

impl Parts {
    /// Sends one part, after waiting until fewer than [`PARTS_IN_FLIGHT`] are in flight.
    async fn send(&mut self, part: Bytes) -> object_store::Result<()> {
        while self.tasks.len() >= PARTS_IN_FLIGHT {
            if let Some(done) = self.tasks.join_next().await {
                done??;
            }
        }
        self.tasks.spawn(self.upload.put_part(part.into()));
        self.sent += 1;
        Ok(())
    }

    /// Waits for every part, then completes the upload.
    async fn finish(&mut self) -> object_store::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        self.upload.complete().await.map(|_| ())
    }

    /// Stops the parts in flight and aborts the upload (best effort: a cloud store's
    /// lifecycle rule removes what an abort could not).
    async fn abort(mut self) {
        self.tasks.shutdown().await;
        let _ = self.upload.abort().await;
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ObjectStoreBlobs {
    /// The backend over an opened store; `shown` names it in messages.
    pub(crate) fn new(opened: OpenedStore, shown: String) -> Self {
        Self {
            store: opened.store,
            root: opened.prefix,
            shown,
            local_dir: opened.local_dir,
            no_create_rename: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    fn store_error(&self, what: &str, e: object_store::Error) -> Error {
        Error::store(format!("{what} ({})", self.shown), e)
    }

    fn blobs(&self) -> Path {
        self.root.clone().join("blobs")
    }

    fn blob_path(&self, sha: &Sha256Digest) -> Path {
        let s = sha.as_str();
        self.blobs().join(&s[..2]).join(&s[2..])
    }

    fn transfers(&self) -> Path {
        self.root.clone().join("transfers")
    }

    fn transfer_prefix(&self, id: &TransferId) -> Path {
        self.transfers().join(id.as_str())
    }

    fn chunk_path(&self, id: &TransferId, index: u64) -> Path {
        self.transfer_prefix(id).join(index.to_string())
    }

    fn tmp(&self) -> Path {
        self.root.clone().join("tmp")
    }

    fn temp_path(&self, kind: &str) -> Path {
        self.tmp()
            .join(format!("{kind}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Staged bytes at `path`, deleted (in the background) unless installed.
    fn staged(&self, path: &Path, info: BlobInfo) -> Staged {
        let store = self.store.clone();
        let doomed = path.clone();
        Staged::new(info, path.to_string(), move || {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.delete(&doomed).await;
                });
            }
        })
    }

    fn note_buffered(&self, bytes: usize) {
        self.stats
            .peak_buffered_bytes
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Streams `data` to `tmp`, hashing and counting; the bytes' info once they are
    /// complete at `tmp` (nothing there on any error).
    async fn upload(
        &self,
        tmp: &Path,
        mut data: ByteStream,
        expect: BlobExpect<'_>,
    ) -> std::result::Result<BlobInfo, Failure> {
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut part: Vec<u8> = Vec::new();
        let mut parts: Option<Parts> = None;
        let streamed: std::result::Result<(), Failure> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(|e| Failure::Refused(Error::io("reading upload", e)))?;
                if size + chunk.len() as u64 > expect.max_bytes {
                    return Err(Failure::Refused(Error::rejected(
                        RejectReason::TooLarge,
                        None,
                        format!("upload exceeds the limit of {} bytes", expect.max_bytes),
                    )));
                }
                size += chunk.len() as u64;
                hasher.update(&chunk);
                let mut rest: &[u8] = &chunk;
                while !rest.is_empty() {
                    let take = rest.len().min(PART_SIZE - part.len());
                    grow(&mut part, take);
                    part.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if part.len() < PART_SIZE {
                        continue;
                    }
                    let full = Bytes::from(std::mem::take(&mut part));
                    if parts.is_none() {
                        let upload = self
                            .store
                            .put_multipart(tmp)
                            .await
                            .map_err(|e| Failure::Store("starting a multipart upload", e))?;
                        parts = Some(Parts {
                            upload,
                            tasks: JoinSet::new(),
                            sent: 0,
                        });
                    }
                    if let Some(p) = parts.as_mut() {
                        p.send(full)
                            .await
                            .map_err(|e| Failure::Store("uploading a part", e))?;
                        self.note_buffered(p.tasks.len() * PART_SIZE);
                    }
                }
                let in_flight = parts.as_ref().map_or(0, |p| p.tasks.len());
                self.note_buffered(part.capacity() + in_flight * PART_SIZE);
            }
            Ok(())
        }
        .await;
        let info = BlobInfo {
            sha256: Sha256Digest::from_bytes(&hasher.finalize().into()),
            size_bytes: size,
        };
        // Checked before anything is completed: refused bytes never become an object.
        let checked = streamed
            .and_then(|()| check_blob_expectations(&info, expect).map_err(Failure::Refused));
        let written = match (checked, parts) {
            (Err(e), Some(p)) => {
                p.abort().await;
                Err(e)
            }
            (Err(e), None) => Err(e),
            (Ok(()), None) => {
                let r = self
                    .store
                    .put(tmp, Bytes::from(part).into())
                    .await
                    .map(|_| ())
                    .map_err(|e| Failure::Store("writing a blob", e));
                if r.is_ok() {
                    self.stats.single_puts.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            (Ok(()), Some(mut p)) => {
                let mut r = Ok(());
                if !part.is_empty() {
                    r = p.send(Bytes::from(part)).await;
                }
                if r.is_ok() {
                    r = p.finish().await;
                }
                let sent = p.sent;
                match r {
                    Ok(()) => {
                        self.stats.multipart_uploads.fetch_add(1, Ordering::Relaxed);
                        self.stats.parts_uploaded.fetch_add(sent, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        p.abort().await;
                        Err(Failure::Store("completing a multipart upload", e))
                    }
                }
            }
        };
        if written.is_err() {
            self.stats.aborted_uploads.fetch_add(1, Ordering::Relaxed);
        }
        written.map(|()| info)
    }

    /// Moves staged bytes to `to`: without replacing an existing object when `create_only`
    /// and the store can, else replacing it.
    async fn install(&self, mut staged: Staged, to: &Path, create_only: bool) -> Result<()> {
        let from = Path::from(staged.name.as_str());
        let missing = |e| {
            Error::store(
                format!(
                    "the staged object {from} was removed (by gc after temp_ttl?) ({})",
                    self.shown
                ),
                e,
            )
        };
        if create_only && !self.no_create_rename.load(Ordering::Relaxed) {
            match self.store.rename_if_not_exists(&from, to).await {
                Ok(()) => {
                    staged.disarm();
                    return Ok(());
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    // Content-addressed: the object there holds these very bytes.
                    return match self.store.delete(&from).await {
                        Ok(()) => {
                            staged.disarm();
                            Ok(())
                        }
                        Err(e) if is_not_found(&e) => {
                            staged.disarm();
                            Ok(())
                        }
                        // Left to the staged copy's cleanup and gc.
                        Err(_) => Ok(()),
                    };
                }
                Err(
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ) => self.no_create_rename.store(true, Ordering::Relaxed),
                Err(e) if is_not_found(&e) => return Err(missing(e)),
                Err(e) => return Err(self.store_error("moving a blob into place", e)),
            }
        }
        match self.store.rename(&from, to).await {
            Ok(()) => {
                staged.disarm();
                Ok(())
            }
            Err(e) if is_not_found(&e) => Err(missing(e)),
            Err(e) => Err(self.store_error("moving bytes into place", e)),
        }
    }

    /// A reader over `stream`, which must yield exactly `len` bytes, pumped by a thread of
    /// its own (see [`PumpReader`]).
    fn pump(stream: BoxStream<'static, std::io::Result<Bytes>>, len: u64) -> Result<BlobReader> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::store("reading from the object store needs a Tokio runtime", e))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        std::thread::Builder::new()
            .name("crownest-blob-read".into())
            .spawn(move || {
                let mut stream = stream;
                while let Some(item) = rt.block_on(stream.next()) {
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| Error::store("starting a blob reader thread", e))?;
        Ok(Box::new(PumpReader {
            rx,
            current: Bytes::new(),
            done: false,
            remaining: len,
        }))
    }

    /// Removes an empty `transfers/<id>` directory left by a `file:` store (best effort).
    fn tidy_transfer_dir(&self, id: &TransferId) {
        if let Some(dir) = &self.local_dir {
            let _ = std::fs::remove_dir(dir.join("transfers").join(id.as_str()));
        }
    }
}

/// A blocking reader fed by a pump thread through a bounded channel: at most
/// [`READ_AHEAD`] chunks wait, plus the one being read. The pump runs the stream on the
/// runtime the reader was opened on, so read it from a blocking thread (as the engine's
/// extractor does) or from a multi-threaded runtime's worker, never from a current-thread
/// runtime's only thread. A stream that ends early or runs long is an error, never a
/// silently short read.
struct PumpReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
    /// Bytes still expected.
    remaining: u64,
}

impl std::io::Read for PumpReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    if b.len() as u64 > self.remaining {
                        self.done = true;
                        return Err(std::io::Error::other(
                            "the object store returned more bytes than the object holds",
                        ));
                    }
                    self.remaining -= b.len() as u64;
                    self.current = b;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    if self.remaining > 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "the object store's stream ended {} bytes early",
                                self.remaining
                            ),
                        ));
                    }
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[async_trait]
impl BlobBackend for ObjectStoreBlobs {
    async fn receive(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<Staged> {
        let tmp = self.temp_path("blob");
        match self.upload(&tmp, data, expect).await {
            Ok(info) => Ok(self.staged(&tmp, info)),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Store(what, e)) => Err(self.store_error(what, e)),
        }
    }

    async fn stage_chunk(&self, data: Bytes) -> Result<Staged> {
        let tmp = self.temp_path("chunk");
        let info = BlobInfo {
            sha256: Sha256Digest::of(&data),
            size_bytes: data.len() as u64,
        };
        self.store
            .put(&tmp, data.into())
            .await
            .map_err(|e| self.store_error("writing a chunk", e))?;
        Ok(self.staged(&tmp, info))
    }

    async fn install_blob(&self, staged: Staged) -> Result<()> {
        let to = self.blob_path(&staged.info.sha256);
        self.install(staged, &to, true).await
    }

    async fn install_chunk(&self, staged: Staged, transfer: &TransferId, index: u64) -> Result<()> {
        // A chunk object without a row (a crashed put) may be there: replaced.
        let to = self.chunk_path(transfer, index);
        self.install(staged, &to, false).await
    }

    async fn read_chunk(&self, transfer: &TransferId, index: u64) -> Result<Vec<u8>> {
        let got = self
            .store
            .get(&self.chunk_path(transfer, index))
            .await
            .map_err(|e| self.store_error("reading a stored chunk", e))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.store_error("reading a stored chunk", e))?;
        Ok(bytes.to_vec())
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        let got = match self.store.get(&self.blob_path(sha256)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => {
                return Err(Error::Store {
                    message: format!(
                        "blob {sha256} has a row but its object is missing ({})",
                        self.shown
                    ),
                    source: Some(Box::new(e)),
                });
            }
            Err(e) => return Err(self.store_error("opening a stored blob", e)),
        };
        let len = got.range.end - got.range.start;
        match got.payload {
            // `LocalFileSystem`: the open file itself (readable from any thread).
            GetResultPayload::File(mut file, _) => {
                use std::io::{Read as _, Seek as _};
                file.seek(std::io::SeekFrom::Start(got.range.start))
                    .map_err(|e| Error::store("opening a stored blob", e))?;
                Ok(Box::new(file.take(len)))
            }
            GetResultPayload::Stream(s) => {
                Self::pump(s.map_err(std::io::Error::other).boxed(), len)
            }
        }
    }

    async fn delete_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        let path = self.blob_path(sha256);
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(self.store_error("looking up a blob", e)),
        }
        match self.store.delete(&path).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.store_error("deleting a blob", e)),
        }
    }

    async fn list_blobs(&self, age: Duration) -> Result<Vec<Sha256Digest>> {
        let cutoff = chrono_cutoff(age);
        let blobs = self.blobs();
        let mut listing = self.store.list(Some(&blobs));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.store_error("listing blobs", e))?;
            if meta.last_modified > cutoff {
                continue;
            }
            // Only `blobs/ab/cdef...` exactly: anything else there is not ours.
            let Some(parts) = meta.location.prefix_match(&blobs) else {
                continue;
            };
            let parts: Vec<_> = parts.collect();
            let [dir, file] = parts.as_slice() else {
                continue;
            };
            let name = format!("{}{}", dir.as_ref(), file.as_ref());
            if dir.as_ref().len() == 2
                && let Ok(digest) = Sha256Digest::parse(&name)
                && digest.as_str() == name
            {
                out.push(digest);
            }
        }
        Ok(out)
    }

    async fn open_chunks(&self, transfer: &TransferId, lens: Vec<u64>) -> Result<BlobReader> {
        let total = lens.iter().sum();
        let mut paths = Vec::with_capacity(lens.len());
        for (index, want) in lens.into_iter().enumerate() {
            let path = self.chunk_path(transfer, index as u64);
            let meta = self
                .store
                .head(&path)
                .await
                .map_err(|e| self.store_error("checking a chunk", e))?;
            if meta.size != want {
                return Err(Error::Store {
                    message: format!(
                        "chunk object {path} has {} bytes, expected {want} ({})",
                        meta.size, self.shown
                    ),
                    source: None,
                });
            }
            paths.push(path);
        }
        let store = self.store.clone();
        // One chunk fetched at a time, in order.
        let stream = futures::stream::iter(paths)
            .then(move |path| {
                let store = store.clone();
                async move {
                    store
                        .get(&path)
                        .await
                        .map(|got| got.into_stream().map_err(std::io::Error::other))
                        .map_err(std::io::Error::other)
                }
            })
            .try_flatten()
            .boxed();
        Self::pump(stream, total)
    }

    async fn delete_chunks(&self, transfer: &TransferId) -> Result<()> {
        let prefix = self.transfer_prefix(transfer);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.store_error("deleting a transfer's chunks", e)),
            }
        }
        self.tidy_transfer_dir(transfer);
        Ok(())
    }

    async fn list_chunk_sets(&self) -> Result<Vec<TransferId>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.transfers()))
            .await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.store_error("listing transfers", e)),
        };
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(|name| TransferId::parse(name).ok())
            .collect())
    }

    async fn sweep_staging(&self, age: Duration) -> Result<u64> {
        let cutoff = chrono_cutoff(age);
        let stale: Vec<Path> = self
            .store
            .list(Some(&self.tmp()))
            .try_filter(|m| futures::future::ready(m.last_modified <= cutoff))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.store_error("listing staged objects", e))?;
        let mut deleted = 0;
        for path in stale {
            match self.store.delete(&path).await {
                Ok(()) => deleted += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.store_error("deleting a staged object", e)),
            }
        }
        // `LocalFileSystem` keeps a multipart upload in a `<name>#<n>` file its listing
        // hides: a crashed upload's is swept here, by age, like any temp file.
        if let Some(dir) = self.local_dir.clone() {
            deleted += tokio::task::spawn_blocking(move || {
                crownest_core::store::blob_dir::BlobDir::new(&dir).sweep_tmp(age)
            })
            .await
            .map_err(|e| Error::store("sweeping temp files", e))?
            .map_err(|e| Error::store("sweeping temp files", e))?;
        }
        Ok(deleted)
    }

    fn stream_stats(&self) -> Option<BlobStreamStats> {
        Some(BlobStreamStats {
            single_puts: self.stats.single_puts.load(Ordering::Relaxed),
            multipart_uploads: self.stats.multipart_uploads.load(Ordering::Relaxed),
            parts_uploaded: self.stats.parts_uploaded.load(Ordering::Relaxed),
            peak_buffered_bytes: self.stats.peak_buffered_bytes.load(Ordering::Relaxed),
            aborted_uploads: self.stats.aborted_uploads.load(Ordering::Relaxed),
            part_size: PART_SIZE as u64,
            parts_in_flight: PARTS_IN_FLIGHT as u64,
        })
    }
}

/// Makes room for `more` bytes in the part being filled: doubling from 64 KiB, never
/// past [`PART_SIZE`] (exact reservations, so the capacity is the bound).
fn grow(part: &mut Vec<u8>, more: usize) {
    let need = part.len() + more;
    if need <= part.capacity() {
        return;
    }
    let target = need.max(part.capacity() * 2).clamp(64 * 1024, PART_SIZE);
    part.reserve_exact(target - part.len());
}

/// Now minus `age`, as the object store's timestamps.
fn chrono_cutoff(age: Duration) -> chrono::DateTime<chrono::Utc> {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    chrono::Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    //! The backend over `object_store`'s `InMemory`, whose reads are streams (not files):
    //! the pump reader, multipart uploads and the install paths without a database.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crownest_core::ArchiveDescriptor;
    use object_store::memory::InMemory;

    fn backend() -> (ObjectStoreBlobs, Arc<InMemory>) {
        let mem = Arc::new(InMemory::new());
        let opened = OpenedStore {
            store: mem.clone(),
            prefix: Path::from("crownest"),
            local_dir: None,
        };
        (ObjectStoreBlobs::new(opened, "memory://test".into()), mem)
    }

    fn stream_of(data: &[u8], piece: usize) -> ByteStream {
        let pieces: Vec<std::io::Result<Bytes>> = data
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces).boxed()
    }

    async fn keys(mem: &InMemory) -> Vec<String> {
        let mut v: Vec<String> = mem
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    }

    fn read_blocking(r: BlobReader) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut r = r;
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut v).unwrap();
            v
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multipart_blob_is_installed_once_and_streams_back() {
        let (b, mem) = backend();
        let data: Vec<u8> = (0..(PART_SIZE * 2 + 4321))
            .map(|i| (i % 241) as u8)
            .collect();
        let d = ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(&data),
        };
        let expect = BlobExpect {
            descriptor: Some(&d),
            max_bytes: u64::MAX,
        };
        let staged = b.receive(stream_of(&data, 100_000), expect).await.unwrap();
        assert!(
            staged.name.starts_with("crownest/tmp/blob-"),
            "{}",
            staged.name
        );
        b.install_blob(staged).await.unwrap();
        // The same bytes again: the object there is kept, the staged copy removed.
        let again = b.receive(stream_of(&data, 7_000), expect).await.unwrap();
        b.install_blob(again).await.unwrap();
        let s = d.sha256.as_str();
        assert_eq!(
            keys(&mem).await,
            vec![format!("crownest/blobs/{}/{}", &s[..2], &s[2..])]
        );
        let stats = b.stream_stats().unwrap();
        assert_eq!(stats.multipart_uploads, 2);
        assert_eq!(stats.parts_uploaded, 6);
        assert!(stats.peak_buffered_bytes <= ((PARTS_IN_FLIGHT + 1) * PART_SIZE) as u64);
        // Read through the pump thread, from a plain thread and from a worker.
        let back = read_blocking(b.open_blob(&d.sha256).await.unwrap())
            .join()
            .unwrap();
        assert_eq!(back, data);
        let mut r = b.open_blob(&d.sha256).await.unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut v).unwrap();
        assert_eq!(v, data);
        assert_eq!(
            b.list_blobs(Duration::ZERO).await.unwrap(),
            vec![d.sha256.clone()]
        );
        assert!(b.delete_blob(&d.sha256).await.unwrap());
        assert!(!b.delete_blob(&d.sha256).await.unwrap());
        assert!(keys(&mem).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_ends_early_is_an_error_not_a_short_read() {
        let short = futures::stream::iter([Ok(Bytes::from_static(b"abc"))]).boxed();
        let mut r = ObjectStoreBlobs::pump(short, 5).unwrap();
        let mut v = Vec::new();
        let err = std::io::Read::read_to_end(&mut r, &mut v).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let long = futures::stream::iter([Ok(Bytes::from_static(b"abcdef"))]).boxed();
        let mut r = ObjectStoreBlobs::pump(long, 5).unwrap();
        assert!(std::io::Read::read_to_end(&mut r, &mut Vec::new()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_bytes_never_become_an_object() {
        let (b, mem) = backend();
        for len in [10usize, PART_SIZE + 10] {
            let data = vec![1u8; len];
            let d = ArchiveDescriptor {
                size_bytes: len as u64,
                sha256: Sha256Digest::of(b"other"),
            };
            let err = b
                .receive(
                    stream_of(&data, 65536),
                    BlobExpect {
                        descriptor: Some(&d),
                        max_bytes: u64::MAX,
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::ArchiveRejected { .. }), "{err:?}");
            let err = b
                .receive(
                    stream_of(&data, 65536),
                    BlobExpect {
                        descriptor: None,
                        max_bytes: len as u64 - 1,
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::ArchiveRejected { .. }), "{err:?}");
        }
        assert!(keys(&mem).await.is_empty());
        assert_eq!(b.stream_stats().unwrap().aborted_uploads, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_are_objects_read_in_order_and_swept() {
        let (b, mem) = backend();
        let t = TransferId::new();
        let parts: [&[u8]; 3] = [b"first-", b"second-", b"third"];
        // Installed out of order.
        for i in [2usize, 0, 1] {
            let staged = b.stage_chunk(Bytes::from_static(parts[i])).await.unwrap();
            b.install_chunk(staged, &t, i as u64).await.unwrap();
        }
        assert_eq!(b.read_chunk(&t, 1).await.unwrap(), b"second-");
        let lens = parts.iter().map(|p| p.len() as u64).collect::<Vec<_>>();
        let all = read_blocking(b.open_chunks(&t, lens.clone()).await.unwrap())
            .join()
            .unwrap();
        assert_eq!(all, b"first-second-third");
        let mut wrong = lens;
        wrong[1] += 1;
        assert!(b.open_chunks(&t, wrong).await.is_err(), "a length mismatch");
        assert_eq!(b.list_chunk_sets().await.unwrap(), vec![t.clone()]);
        // A staged chunk nobody installed: swept once stale, not before.
        let dropped = b.stage_chunk(Bytes::from_static(b"x")).await.unwrap();
        let name = dropped.name.clone();
        std::mem::forget(dropped);
        assert_eq!(b.sweep_staging(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(b.sweep_staging(Duration::ZERO).await.unwrap(), 1);
        assert!(!keys(&mem).await.contains(&name));
        b.delete_chunks(&t).await.unwrap();
        assert!(b.list_chunk_sets().await.unwrap().is_empty());
        assert!(keys(&mem).await.is_empty());
    }
}
