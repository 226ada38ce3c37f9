//! [`PostgresStore`]: the [`Store`] implementation.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::gc::{GcPolicy, StoreGcReport};
use crownest_core::store::{
    BlobExpect, BlobInfo, BlobReader, ByteStream, CreateOutcome, RunCommit, RunQuery, Store,
    TransferRecord,
};
use crownest_core::{
    Artifact, ArtifactId, Error, Event, EvidenceBundle, Result, RunId, RunRecord, Sha256Digest,
    TransferId,
};
use deadpool_postgres::{Object, Pool};

use crate::blob_url::BlobLocation;
use crate::blobs::{self, BlobBackend, lock_key};
use crate::config::{PostgresConfig, redact};
use crate::error::{commit_failed, db, pool as pool_error};
use crate::localdir::LocalDirBlobs;
use crate::objstore::{BlobStreamStats, ObjectStoreBlobs};
use crate::runs::{self, execute};
use crate::schema;
use crate::transfers;
use crate::{gc, pool};

/// A [`Store`] on a PostgreSQL server (runs, events, evidence, metadata) plus
/// content-addressed blob bytes in a directory or an object store. Cheap to clone (clones share one connection pool).
///
/// See the [crate docs](crate) for what it guarantees across processes and hosts.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    blobs: Arc<dyn BlobBackend>,
    config: PostgresConfig,
    /// The queue listener's counter (`coordination.rs`), started on first use.
    notices: std::sync::Mutex<Option<tokio::sync::watch::Sender<u64>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &redact(&self.inner.config.url))
            .field("schema", &self.inner.config.schema)
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, migrates the schema to the current version (creating it when missing) and
    /// opens the blob backend (creating a blob directory; an object store is not contacted
    /// until it is used). Safe to call from several processes at once.
    pub async fn open(config: PostgresConfig) -> Result<Self> {
        let pool = pool::build(&config)?;
        let blobs = open_blobs(&config.blobs).await?;
        let mut client = pool.get().await.map_err(|e| {
            Error::store(
                format!("connecting to PostgreSQL at {}", redact(&config.url)),
                e,
            )
        })?;
        schema::migrate(&mut client, config.checked_schema()?).await?;
        drop(client);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                blobs,
                config,
                notices: std::sync::Mutex::default(),
            }),
        })
    }

    /// What the object-store blob backend's streaming has done since the store opened
    /// (uploads, parts, the most bytes one upload held); `None` with a blob directory.
    pub fn blob_stream_stats(&self) -> Option<BlobStreamStats> {
        self.inner.blobs.stream_stats()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i32> {
        schema::current_version(&**self.client().await?).await
    }

    /// Closes the pool: later calls fail with `Error::Store`; connections in use close when
    /// their call returns.
    pub fn close(&self) {
        self.inner.pool.close();
    }

    /// One garbage-collection pass with explicit ages (also `Store::collect_garbage`).
    pub async fn gc_with(&self, policy: GcPolicy) -> Result<StoreGcReport> {
        gc::collect(&self.inner.pool, &*self.inner.blobs, &policy).await
    }

    /// A receiver of the queue listener's counter, starting the listener when none runs.
    pub(crate) fn queue_notices_rx(&self) -> tokio::sync::watch::Receiver<u64> {
        let mut slot = self.inner.notices.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(tx) if !tx.is_closed() => tx.subscribe(),
            _ => {
                let (tx, rx) = tokio::sync::watch::channel(0);
                crate::coordination::spawn_listener(&self.inner.config, tx.clone());
                *slot = Some(tx);
                rx
            }
        }
    }

    pub(crate) async fn client(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }
}

/// The blob backend for `location`: the directory backend for a path, `object_store` for a
/// URL.
async fn open_blobs(location: &BlobLocation) -> Result<Arc<dyn BlobBackend>> {
    match location {
        BlobLocation::Dir(dir) => {
            if dir.to_string_lossy().contains("://") {
                return Err(Error::invalid(
                    "blob_dir",
                    format!(
                        "{} is a URL, not a directory: use PostgresConfig::with_blob_url",
                        dir.display()
                    ),
                ));
            }
            let dir = dir.clone();
            Ok(Arc::new(
                tokio::task::spawn_blocking(move || LocalDirBlobs::open(&dir))
                    .await
                    .map_err(|e| Error::store("opening the blob directory", e))??,
            ))
        }
        BlobLocation::Url(url) => {
            let opened = {
                let url = url.clone();
                tokio::task::spawn_blocking(move || url.open())
                    .await
                    .map_err(|e| Error::store("opening the object store", e))??
            };
            Ok(Arc::new(ObjectStoreBlobs::new(opened, url.to_string())))
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome> {
        runs::create_run(&mut self.client().await?, run).await
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        runs::get_run(&self.client().await?, id).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        runs::list_runs(&self.client().await?, query).await
    }

    async fn list_unfinished(&self) -> Result<Vec<RunRecord>> {
        runs::list_unfinished(&self.client().await?).await
    }

    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>> {
        let queued = commit.record.as_ref().is_some_and(runs::claimable);
        let events = runs::commit(&mut self.client().await?, id, commit).await?;
        if queued {
            // After the commit (never inside a frequent one: a notifying transaction takes
            // a global lock at commit). A lost notification only delays a claim: claimers
            // also poll.
            let channel = crate::coordination::queue_channel(&self.inner.config);
            let notified = async {
                let client = self.client().await?;
                execute(
                    &client,
                    "notifying the queue",
                    "SELECT pg_notify($1, '')",
                    &[&channel],
                )
                .await
            };
            if let Err(e) = notified.await {
                tracing::debug!(error = %e.chain(), "queue notification failed");
            }
        }
        Ok(events)
    }

    fn coordination(&self) -> Option<&dyn crownest_core::store::coordination::Coordination> {
        Some(self)
    }

    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord> {
        runs::request_cancel(&self.client().await?, id).await
    }

    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        runs::list_events(&self.client().await?, id, after_seq, limit).await
    }

    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo> {
        // Streamed into the staging area with no connection held.
        let staged = self.inner.blobs.receive(data, expect).await?;
        let info = staged.info.clone();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db("starting put_blob", e))?;
        // Exclusive against discard/gc of these bytes (a session lock elsewhere).
        execute(
            &tx,
            "locking a blob",
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(&info.sha256)],
        )
        .await?;
        self.inner.blobs.install_blob(staged).await?;
        blobs::record(&tx, &info).await?;
        tx.commit()
            .await
            .map_err(|e| commit_failed("committing put_blob", e))?;
        Ok(info)
    }

    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        blobs::size(&self.client().await?, sha256).await
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        if blobs::size(&self.client().await?, sha256).await?.is_none() {
            return Err(Error::not_found("blob", sha256));
        }
        self.inner.blobs.open_blob(sha256).await
    }

    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        Ok(
            gc::discard(&self.inner.pool, &*self.inner.blobs, sha256, None)
                .await?
                .is_some(),
        )
    }

    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()> {
        transfers::create(&mut self.client().await?, &*self.inner.blobs, transfer).await
    }

    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord> {
        transfers::get(&self.client().await?, id, false)
            .await?
            .ok_or_else(|| Error::not_found("transfer", id))
    }

    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord> {
        transfers::put_chunk(
            &mut self.client().await?,
            &*self.inner.blobs,
            id,
            index,
            data,
        )
        .await
    }

    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader> {
        transfers::open(&self.client().await?, &*self.inner.blobs, id).await
    }

    async fn delete_transfer(&self, id: &TransferId) -> Result<()> {
        transfers::delete(&self.client().await?, &*self.inner.blobs, id).await
    }

    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>> {
        transfers::list(&self.client().await?, run).await
    }

    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport> {
        self.gc_with(*policy).await
    }

    async fn delete_run(&self, id: &RunId) -> Result<()> {
        runs::delete_run(&mut self.client().await?, &*self.inner.blobs, id).await
    }

    async fn usage(&self) -> Result<crownest_core::store::StoreUsage> {
        crate::usage::usage(&self.client().await?).await
    }

    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        runs::get_evidence(&self.client().await?, id).await
    }

    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crownest_core::signing::DsseEnvelope>> {
        runs::get_evidence_envelope(&self.client().await?, id).await
    }

    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        runs::get_artifact(&self.client().await?, id).await
    }
}
