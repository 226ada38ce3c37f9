//! [`SqliteStore`]: the [`Store`] implementation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::store::{
    BlobExpect, BlobInfo, BlobReader, ByteStream, CreateOutcome, RunCommit, RunQuery, Store,
    TransferRecord,
};
use crownest_core::{
    Artifact, ArtifactId, Error, Event, EventKind, EvidenceBundle, NewEvent, Result, RunId,
    RunRecord, Sha256Digest, TransferId,
};

use crate::blobs;
use crate::config::SqliteConfig;
use crate::error::{Fault, Faults, OpError, Poison};
use crate::gc::{self, GcPolicy, StoreGcReport, now_ms};
use crate::layout::Layout;
use crate::pool::ReadPool;
use crate::runs;
use crate::schema::{connect, migrate};
use crate::transfers;
use crate::writer::{Shared, Stats, Sync, WriteStats, Writer};

/// A durable [`Store`]: SQLite (WAL) for runs, events and metadata, plus a
/// content-addressed blob directory. Cheap to clone (clones share one writer thread).
///
/// See the [crate docs](crate) for the durability guarantees and multi-process use.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Writer,
    reads: Arc<ReadPool>,
    config: SqliteConfig,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.inner.shared.layout.root)
            .field("poisoned", &self.inner.shared.poison.is_poisoned())
            .finish_non_exhaustive()
    }
}

/// Event payload of a commit, for the group-commit byte budget.
fn payload_bytes(events: &[NewEvent]) -> usize {
    events
        .iter()
        .map(|e| {
            128 + match &e.kind {
                EventKind::Stdout(c) | EventKind::Stderr(c) => {
                    c.data.as_ref().map_or(0, String::len)
                        + c.data_base64.as_ref().map_or(0, String::len)
                }
                _ => 0,
            }
        })
        .sum()
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` with the default [`SqliteConfig`].
    /// The database is `<dir>/crownest.db`; its schema is migrated to the current version.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, SqliteConfig::default()).await
    }

    /// Opens the store in `dir` with `config`.
    pub async fn open_with(dir: impl AsRef<Path>, config: SqliteConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, config))
            .await
            .map_err(|e| Error::store("opening the store", e))?
    }

    /// [`SqliteStore::open_with`] for callers outside an async context (it does blocking
    /// I/O: directory creation, migrations).
    pub fn open_blocking(dir: &Path, config: SqliteConfig) -> Result<Self> {
        let layout = Layout::new(dir);
        layout.create().map_err(|e| {
            Error::store(format!("creating the store directory {}", dir.display()), e)
        })?;
        // Whether this open creates the database or its write-ahead log (see below).
        let creates = !layout.db.exists() || !layout.wal_path().exists();
        let mut conn = connect(&layout.db, config.busy_timeout)?;
        migrate(&mut conn)?;
        if creates {
            // The new files' directory entries are made durable here, once: this build's
            // SQLite does not fsync the directory at the first sync of every process's WAL
            // handle (`SQLITE_DISABLE_DIRSYNC`, `.cargo/config.toml`), which cost every CLI
            // command a second fsync although the WAL file is kept between processes
            // (`persist_wal`). With a SQLite built without it, this one is redundant.
            sync_dir(&layout.root).map_err(|e| {
                Error::store(format!("syncing the store directory {}", dir.display()), e)
            })?;
        }
        let reads = Arc::new(
            ReadPool::new(
                layout.db.clone(),
                config.busy_timeout,
                config.read_connections,
                config.max_read_connections,
            )
            .with_inline(config.inline_reads),
        );
        // The first read's connection opens beside whatever the caller does next.
        reads.prewarm();
        let shared = Arc::new(Shared {
            layout,
            poison: Poison::default(),
            faults: Faults::default(),
            stats: Stats::default(),
        });
        let writer = Writer::start(conn, shared.clone(), &config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer,
                reads,
                config,
            }),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.layout.root
    }

    /// The database file (`<dir>/crownest.db`).
    pub fn db_path(&self) -> PathBuf {
        self.inner.shared.layout.db.clone()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// True once a write failed with an I/O or SQLite error: every later write fails.
    pub fn is_poisoned(&self) -> bool {
        self.inner.shared.poison.is_poisoned()
    }

    /// Writes and write transactions committed so far by this instance (group commit makes
    /// `transactions` smaller than `writes` under concurrent load).
    pub fn write_stats(&self) -> WriteStats {
        self.inner.shared.stats.snapshot()
    }

    /// Lets queued writes finish, then stops the writer thread and closes the write
    /// connection. Later writes fail with `Error::Store` ("the store is closed"); reads keep
    /// working. Dropping every clone of the store does the same without waiting.
    ///
    /// A WAL of more than 1 MiB is checkpointed into the database and truncated first (if
    /// other processes' readers let it within 100 ms): the next process to open the store
    /// reads the whole WAL back to rebuild its index, so a short-lived process (a CLI
    /// command) should close the store it wrote to.
    pub async fn close(&self) {
        // Idle read connections close first (the checkpoint then waits for no reader of
        // this process), and no connection is kept from now on.
        self.inner.reads.close_idle();
        self.inner.writer.close().await;
    }

    /// One garbage-collection pass with the configured ages (`blob_grace`, `transfer_ttl`,
    /// `temp_ttl`).
    pub async fn gc(&self) -> Result<StoreGcReport> {
        let c = &self.inner.config;
        self.gc_with(GcPolicy {
            blob_grace: c.blob_grace,
            transfer_ttl: c.transfer_ttl,
            temp_ttl: c.temp_ttl,
        })
        .await
    }

    /// One garbage-collection pass with explicit ages.
    pub async fn gc_with(&self, policy: GcPolicy) -> Result<StoreGcReport> {
        self.inner
            .writer
            .submit(0, move |conn, ctx| gc::collect(conn, ctx, policy))
            .await
    }

    /// Makes a later write fail as an I/O error would (tests of poisoning).
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.shared.faults.add(fault);
    }

    fn fatal_poisons(&self, e: OpError) -> Error {
        match e {
            OpError::Logical(e) => e,
            OpError::Fatal(e) => self.inner.shared.poison.poison(e),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome> {
        self.inner
            .writer
            .submit_with(Sync::Normal, 0, move |conn, _| runs::create_run(conn, run))
            .await
    }

    async fn create_run_with(
        &self,
        run: RunRecord,
        first: RunCommit,
    ) -> Result<(CreateOutcome, Vec<Event>)> {
        let id = run.id.clone();
        let bytes = payload_bytes(&first.events);
        // One write transaction (one savepoint: both or neither) instead of two.
        self.inner
            .writer
            .submit_with(Sync::Normal, bytes, move |conn, _| {
                let outcome = runs::create_run(conn, run)?;
                let sealed = match &outcome {
                    CreateOutcome::Created(_) => runs::commit(conn, &id, first)?,
                    CreateOutcome::Existing(_) => Vec::new(),
                };
                Ok((outcome, sealed))
            })
            .await
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        let id = id.clone();
        self.inner.reads.read(move |c| runs::get_run(c, &id)).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        let query = query.clone();
        self.inner
            .reads
            .read(move |c| runs::list_runs(c, &query))
            .await
    }

    async fn list_unfinished(&self) -> Result<Vec<RunRecord>> {
        self.inner.reads.read(runs::list_unfinished).await
    }

    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>> {
        let id = id.clone();
        let bytes = payload_bytes(&commit.events);
        // The terminal commit (events, record, evidence) is fsynced, and with it the whole
        // chain before it; the commits before it need not be (crate docs, "Durability").
        let terminal =
            commit.evidence.is_some() || commit.events.iter().any(|e| e.kind.is_terminal());
        let sync = if terminal { Sync::Full } else { Sync::Normal };
        self.inner
            .writer
            .submit_with(sync, bytes, move |conn, _| runs::commit(conn, &id, commit))
            .await
    }

    async fn delete_run(&self, id: &RunId) -> Result<()> {
        let id = id.clone();
        self.inner
            .writer
            .submit(0, move |conn, ctx| runs::delete_run(conn, ctx, &id))
            .await
    }

    async fn usage(&self) -> Result<crownest_core::store::StoreUsage> {
        self.inner.reads.read(crate::usage::usage).await
    }

    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord> {
        let id = id.clone();
        self.inner
            .writer
            .submit_with(Sync::Normal, 0, move |conn, _| {
                runs::request_cancel(conn, &id)
            })
            .await
    }

    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let id = id.clone();
        self.inner
            .reads
            .read(move |c| runs::list_events(c, &id, after_seq, limit))
            .await
    }

    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo> {
        self.inner.shared.poison.check()?;
        let received = blobs::receive(&self.inner.shared, data, expect)
            .await
            .map_err(|e| self.fatal_poisons(e))?;
        let now = now_ms();
        self.inner
            .writer
            .submit_with(Sync::Normal, 0, move |conn, ctx| {
                blobs::install(conn, ctx, received, now)
            })
            .await
    }

    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        let sha = sha256.clone();
        self.inner.reads.read(move |c| blobs::size(c, &sha)).await
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        let sha = sha256.clone();
        let shared = self.inner.shared.clone();
        let file = self
            .inner
            .reads
            .read(move |c| blobs::open(c, &shared, &sha))
            .await?;
        Ok(Box::new(file))
    }

    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        let sha = sha256.clone();
        self.inner
            .writer
            .submit(0, move |conn, ctx| gc::discard(conn, ctx, &sha))
            .await
    }

    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()> {
        let t = transfer.clone();
        let now = now_ms();
        self.inner
            .writer
            .submit(0, move |conn, ctx| transfers::create(conn, ctx, &t, now))
            .await
    }

    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord> {
        let id = id.clone();
        self.inner
            .reads
            .read(move |c| {
                transfers::get(c, &id)?.ok_or_else(|| Error::not_found("transfer", &id).into())
            })
            .await
    }

    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord> {
        self.inner.shared.poison.check()?;
        transfers::checked(id)?;
        let t = self.get_transfer(id).await?;
        let len = data.len() as u64;
        if t.chunk_len(index) != Some(len) {
            return Err(Error::invalid(
                "chunk",
                format!("chunk {index} has the wrong length"),
            ));
        }
        let temp = transfers::write_temp(&self.inner.shared, data)
            .await
            .map_err(|e| self.fatal_poisons(e))?;
        let id = id.clone();
        let now = now_ms();
        self.inner
            .writer
            .submit(len.try_into().unwrap_or(usize::MAX), move |conn, ctx| {
                transfers::install_chunk(conn, ctx, &id, index, temp, len, now)
            })
            .await
    }

    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader> {
        transfers::checked(id)?;
        let id = id.clone();
        let shared = self.inner.shared.clone();
        let reader = self
            .inner
            .reads
            .read(move |c| transfers::open(c, &shared, &id))
            .await?;
        Ok(Box::new(reader))
    }

    async fn delete_transfer(&self, id: &TransferId) -> Result<()> {
        if transfers::checked(id).is_err() {
            return Ok(()); // no such transfer can exist
        }
        let id = id.clone();
        self.inner
            .writer
            .submit(0, move |conn, ctx| transfers::delete(conn, ctx, &id))
            .await
    }

    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>> {
        let run = run.cloned();
        self.inner
            .reads
            .read(move |c| transfers::list(c, run.as_ref()))
            .await
    }

    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport> {
        self.gc_with(*policy).await
    }

    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        let id = id.clone();
        self.inner
            .reads
            .read(move |c| runs::get_evidence(c, &id))
            .await
    }

    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crownest_core::signing::DsseEnvelope>> {
        let id = id.clone();
        self.inner
            .reads
            .read(move |c| runs::get_evidence_envelope(c, &id))
            .await
    }

    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        let id = id.clone();
        self.inner
            .reads
            .read(move |c| runs::get_artifact(c, &id))
            .await
    }
}

/// fsyncs a directory (its entries: the files created in it).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
