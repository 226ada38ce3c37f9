//! Blob bytes behind a small trait ([`BlobBackend`]), blob rows in PostgreSQL, and the
//! per-blob advisory lock that keeps the two in step across processes and hosts.
//!
//! PostgreSQL holds what exists (`blobs` rows: digest, size, last put; `chunks` rows); the
//! backend holds the bytes. The rules, the same for every backend:
//!
//! * **Bytes first, row second.** `put_blob` streams into a staging area (hashing and
//!   counting, nothing kept on a mismatch), then — holding the blob's lock — moves the bytes
//!   to their content address and upserts the row in one transaction. A row never names
//!   missing bytes; bytes without a row (a failed commit, a crash) are removed by `gc`.
//! * **Row first, bytes second, lock held across both** for deletions (`discard_blob`,
//!   `gc`): the row is deleted (only when no run or artifact names the blob), then the bytes,
//!   while a session advisory lock on the blob is held, so a concurrent put of the same
//!   bytes either refreshes the row before (and the blob is kept) or installs its bytes after.
//! * A commit that names a blob no earlier version of the run named takes the same lock
//!   (shared) and checks the row exists, so a blob cannot be discarded under a run that is
//!   being attached to it on another host.
//!
//! Two backends: [`crate::localdir::LocalDirBlobs`] (a directory: a plain path in the
//! configuration) and [`crate::objstore::ObjectStoreBlobs`] (the `object_store` crate: a
//! `file://`, `s3://`, `gs://` or `az://` URL). The SQL is the same for both.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::store::{BlobExpect, BlobInfo, BlobReader, ByteStream};
use crownest_core::{Result, Sha256Digest, TransferId};
use deadpool_postgres::{GenericClient, Object, Pool};

use crate::error::{db, pool};

/// Bytes received into the staging area, verified, not yet at their address. Dropping it
/// without installing removes the staged bytes (best effort; `gc` sweeps what is left).
pub(crate) struct Staged {
    /// Digest and size of the staged bytes.
    pub(crate) info: BlobInfo,
    /// The backend's name for the staged bytes.
    pub(crate) name: String,
    cleanup: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("info", &self.info)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// Staged bytes named `name`; `cleanup` removes them unless [`Staged::disarm`] is called.
    pub(crate) fn new(
        info: BlobInfo,
        name: String,
        cleanup: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            info,
            name,
            cleanup: Some(Box::new(cleanup)),
        }
    }

    /// The bytes were moved to their address: nothing to clean up.
    pub(crate) fn disarm(&mut self) {
        self.cleanup = None;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// Where blob and chunk bytes live. Every method is durable when it returns `Ok` (the local
/// backend fsyncs files and directories; `LocalFileSystem` is opened with fsync on; a cloud
/// store acknowledges a write once it is stored).
#[async_trait]
pub(crate) trait BlobBackend: Send + Sync + std::fmt::Debug {
    /// Streams `data` into the staging area, hashing and counting it, enforcing `expect`
    /// (`Error::ArchiveRejected`, nothing kept). Errors reading `data` are `Error::Io`.
    async fn receive(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<Staged>;
    /// Stages one chunk's bytes.
    async fn stage_chunk(&self, data: Bytes) -> Result<Staged>;
    /// Moves staged blob bytes to the address of their digest (replacing equal bytes).
    async fn install_blob(&self, staged: Staged) -> Result<()>;
    /// Moves staged chunk bytes to chunk `index` of `transfer`.
    async fn install_chunk(&self, staged: Staged, transfer: &TransferId, index: u64) -> Result<()>;
    /// The bytes of chunk `index` of `transfer`, as stored (to compare a chunk sent again).
    async fn read_chunk(&self, transfer: &TransferId, index: u64) -> Result<Vec<u8>>;
    /// A blocking reader of a blob's bytes (`Error::NotFound` when they are missing).
    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader>;
    /// Removes a blob's bytes; whether there were any.
    async fn delete_blob(&self, sha256: &Sha256Digest) -> Result<bool>;
    /// Digests of stored blob bytes last written longer ago than `age`.
    async fn list_blobs(&self, age: Duration) -> Result<Vec<Sha256Digest>>;
    /// The chunks of a transfer concatenated in order, after checking each one's length.
    async fn open_chunks(&self, transfer: &TransferId, lens: Vec<u64>) -> Result<BlobReader>;
    /// Removes every chunk of a transfer (none is fine).
    async fn delete_chunks(&self, transfer: &TransferId) -> Result<()>;
    /// Transfers that have chunk bytes stored.
    async fn list_chunk_sets(&self) -> Result<Vec<TransferId>>;
    /// Removes staged bytes older than `age` (crashed uploads); how many.
    async fn sweep_staging(&self, age: Duration) -> Result<u64>;
    /// What the backend's streaming has done (the object-store backend; `None` otherwise).
    fn stream_stats(&self) -> Option<crate::objstore::BlobStreamStats> {
        None
    }
}

/// The advisory-lock key of a blob: the first 64 bits of its digest.
pub(crate) fn lock_key(sha: &Sha256Digest) -> i64 {
    let hex = sha.as_str().get(..16).unwrap_or("0");
    i64::from_ne_bytes(u64::from_str_radix(hex, 16).unwrap_or(0).to_ne_bytes())
}

/// SQL condition: no run names the `blobs` row as its archive, no artifact as its bytes.
pub(crate) const UNNAMED: &str =
    "NOT EXISTS (SELECT 1 FROM runs WHERE runs.archive_sha256 = blobs.sha256)
     AND NOT EXISTS (SELECT 1 FROM artifacts WHERE artifacts.sha256 = blobs.sha256)";

/// A session advisory lock on one blob, held by one pooled connection.
///
/// [`BlobLock::release`] unlocks and returns the connection to the pool. Dropped without
/// it (an error, or the caller's future dropped mid-way), the connection is detached from
/// the pool and closed, which makes the server release the lock: a pooled connection never
/// keeps a lock.
pub(crate) struct BlobLock {
    client: Option<Object>,
    key: i64,
}

impl BlobLock {
    /// Waits for the exclusive lock of `sha`.
    pub(crate) async fn acquire(pool_: &Pool, sha: &Sha256Digest) -> Result<Self> {
        let client = pool_.get().await.map_err(pool)?;
        let key = lock_key(sha);
        let mut lock = Self {
            client: Some(client),
            key,
        };
        lock.client()?
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| db("locking a blob", e))?;
        Ok(lock)
    }

    /// The connection holding the lock.
    pub(crate) fn client(&mut self) -> Result<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| crownest_core::Error::Store {
                message: "the blob lock was released".into(),
                source: None,
            })
    }

    /// Unlocks and returns the connection to the pool.
    pub(crate) async fn release(mut self) -> Result<()> {
        let key = self.key;
        let unlocked = self
            .client()?
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await;
        match unlocked {
            Ok(_) => {
                self.client = None;
                Ok(())
            }
            // Drop closes the connection, which releases the lock.
            Err(e) => Err(db("unlocking a blob", e)),
        }
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Upserts a blob's row (inside the transaction that installed its bytes).
pub(crate) async fn record(client: &impl GenericClient, info: &BlobInfo) -> Result<()> {
    let st = client
        .prepare_cached(
            "INSERT INTO blobs (sha256, size, stored_at) VALUES ($1, $2, now())
             ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, stored_at = excluded.stored_at",
        )
        .await
        .map_err(|e| db("preparing the blob upsert", e))?;
    client
        .execute(&st, &[&info.sha256.as_str(), &to_i64(info.size_bytes)])
        .await
        .map_err(|e| db("recording a blob", e))?;
    Ok(())
}

/// `has_blob`: the row's size.
pub(crate) async fn size(client: &impl GenericClient, sha: &Sha256Digest) -> Result<Option<u64>> {
    let st = client
        .prepare_cached("SELECT size FROM blobs WHERE sha256 = $1")
        .await
        .map_err(|e| db("preparing the blob lookup", e))?;
    let row = client
        .query_opt(&st, &[&sha.as_str()])
        .await
        .map_err(|e| db("looking up a blob", e))?;
    Ok(row.map(|r| to_u64(r.get(0))))
}

/// `u64` → `bigint` (saturating: sizes and seqs never get near `i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `bigint` → `u64` (negative values, which the store never writes, read as 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
