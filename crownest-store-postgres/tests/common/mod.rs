//! Test support: whether a PostgreSQL server is there, and a `PostgresStore` in a schema of
//! its own (so tests run in parallel) with a blob directory of its own, both removed when
//! the store is dropped.
//!
//! The server's URL comes from `CROWNEST_POSTGRES_URL` (`scripts/postgres.sh` starts one).
//! With `CROWNEST_REQUIRE_POSTGRES=1` a missing or unreachable server FAILS the test (CI
//! must not pass by skipping); without it the test prints why and returns early.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::ops::Deref;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::store::{
    BlobExpect, BlobInfo, BlobReader, ByteStream, CreateOutcome, RunCommit, RunQuery, Store,
    TransferRecord,
};
use crownest_core::{
    Artifact, ArtifactId, Event, EvidenceBundle, Result, RunId, RunRecord, Sha256Digest, TransferId,
};
use crownest_store_postgres::{GcPolicy, PostgresConfig, PostgresStore, StoreGcReport};

pub const URL_VAR: &str = "CROWNEST_POSTGRES_URL";
pub const REQUIRE_VAR: &str = "CROWNEST_REQUIRE_POSTGRES";

/// True when the environment demands the real server.
pub fn postgres_required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Fails (required) or prints why the test is skipped; always `None`.
fn skip<T>(reason: &str) -> Option<T> {
    if postgres_required() {
        panic!("{REQUIRE_VAR}=1 but {reason}");
    }
    // Written to the stderr handle directly: libtest captures `eprintln!`, and a skip must
    // be visible.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "skipped: {reason} (start one with scripts/postgres.sh; set {REQUIRE_VAR}=1 to make this a failure)\n"
        )
        .as_bytes(),
    );
    None
}

/// The server URL, or `None` (skipped, or a panic when required).
pub fn url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => skip(&format!("{URL_VAR} is not set")),
    }
}

/// A fresh schema name.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// A store in its own schema and blob directory, dropped with it.
#[derive(Debug)]
pub struct TempStore {
    pub store: PostgresStore,
    pub blob_dir: tempfile::TempDir,
    pub schema: String,
    pub url: String,
    /// `Some(file:///<blob_dir>)` when the blobs go through the object-store backend.
    pub blob_url: Option<String>,
}

/// Which blob backend a [`TempStore`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blobs {
    /// The directory backend (a plain path).
    Dir,
    /// The `object_store` backend over `file:///<dir>` (`LocalFileSystem`).
    FileUrl,
}

impl TempStore {
    /// A new store (blobs in a directory), or `None` when the test is skipped.
    pub async fn open() -> Option<Self> {
        Self::open_with(Blobs::Dir).await
    }

    /// A new store with its blobs behind the object-store backend (`file://`).
    pub async fn open_object_store() -> Option<Self> {
        Self::open_with(Blobs::FileUrl).await
    }

    /// A new store with the given blob backend, or `None` when the test is skipped.
    pub async fn open_with(blobs: Blobs) -> Option<Self> {
        let url = url()?;
        let schema = fresh_schema();
        let blob_dir = tempfile::tempdir().unwrap();
        let blob_url = match blobs {
            Blobs::Dir => None,
            Blobs::FileUrl => Some(format!("file://{}", blob_dir.path().display())),
        };
        let config = config_for(&url, &schema, blob_dir.path(), blob_url.as_deref());
        match PostgresStore::open(config).await {
            Ok(store) => Some(Self {
                store,
                blob_dir,
                schema,
                url,
                blob_url,
            }),
            // Skipped only when the server itself is unreachable: a store that fails on a
            // reachable server is a failure, whatever the environment says.
            Err(e) => match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Err(reach) => skip(&format!("PostgreSQL at {URL_VAR} is unreachable: {reach}")),
                Ok(_) => panic!(
                    "the server is reachable but the store failed: {}",
                    e.chain()
                ),
            },
        }
    }

    /// Another store instance (its own pool) on the same schema and blob directory, as a
    /// second process would open it.
    pub async fn reopen(&self) -> PostgresStore {
        PostgresStore::open(self.config()).await.unwrap()
    }

    /// The configuration of this store.
    pub fn config(&self) -> PostgresConfig {
        config_for(
            &self.url,
            &self.schema,
            self.blob_dir.path(),
            self.blob_url.as_deref(),
        )
    }
}

/// A test configuration: `schema`, blobs in `dir` or at `blob_url`.
pub fn config_for(
    url: &str,
    schema: &str,
    dir: &std::path::Path,
    blob_url: Option<&str>,
) -> PostgresConfig {
    let config = PostgresConfig::new(url, dir)
        .with_schema(schema)
        .with_pool_size(8);
    match blob_url {
        Some(u) => config.with_blob_url(u).unwrap(),
        None => config,
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        self.store.close();
        drop_schema(&self.url, &self.schema);
    }
}

/// Drops a test schema (best effort, on a thread of its own: `Drop` may run inside a
/// runtime).
pub fn drop_schema(url: &str, schema: &str) {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                let task = tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
                drop(client);
                let _ = task.await;
            }
        });
    })
    .join();
}

/// A plain connection to the server, with `search_path` set to `schema`.
pub async fn connect(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    client
}

impl Deref for TempStore {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

#[async_trait]
impl Store for TempStore {
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome> {
        self.store.create_run(run).await
    }
    async fn create_run_with(
        &self,
        run: RunRecord,
        first: RunCommit,
    ) -> Result<(CreateOutcome, Vec<Event>)> {
        self.store.create_run_with(run, first).await
    }
    async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        self.store.get_run(id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        self.store.list_runs(query).await
    }
    async fn list_unfinished(&self) -> Result<Vec<RunRecord>> {
        self.store.list_unfinished().await
    }
    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>> {
        self.store.commit(id, commit).await
    }
    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord> {
        self.store.request_cancel(id).await
    }
    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        self.store.list_events(id, after_seq, limit).await
    }
    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo> {
        self.store.put_blob(data, expect).await
    }
    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        self.store.has_blob(sha256).await
    }
    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        self.store.open_blob(sha256).await
    }
    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        self.store.discard_blob(sha256).await
    }
    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()> {
        self.store.create_transfer(transfer).await
    }
    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord> {
        self.store.get_transfer(id).await
    }
    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord> {
        self.store.put_chunk(id, index, data).await
    }
    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader> {
        self.store.open_transfer(id).await
    }
    async fn delete_transfer(&self, id: &TransferId) -> Result<()> {
        self.store.delete_transfer(id).await
    }
    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>> {
        self.store.list_transfers(run).await
    }
    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport> {
        self.store.collect_garbage(policy).await
    }
    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        self.store.get_evidence(id).await
    }
    async fn delete_run(&self, id: &RunId) -> Result<()> {
        self.store.delete_run(id).await
    }
    async fn usage(&self) -> Result<crownest_core::store::StoreUsage> {
        self.store.usage().await
    }
    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crownest_core::signing::DsseEnvelope>> {
        self.store.get_evidence_envelope(id).await
    }
    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.store.get_artifact(id).await
    }
}

use crownest_core::event::{EventKind, NewEvent, OutputChunk};
use crownest_core::run::RunOwner;
use crownest_core::{Limits, RunSpec};
use futures::StreamExt as _;

/// A fresh run record in `awaiting_archive`.
pub fn new_run() -> RunRecord {
    RunRecord::new(
        RunId::new(),
        RunSpec::new(["true"]),
        "fake".into(),
        Limits::default(),
        RunOwner::current("tests"),
    )
}

/// A stdout event.
pub fn out(text: &str) -> NewEvent {
    NewEvent::now(EventKind::Stdout(OutputChunk {
        offset: 0,
        data: Some(text.into()),
        data_base64: None,
    }))
}

/// A commit of `events` with no record change.
pub fn events_commit(expected_next_seq: u64, events: Vec<NewEvent>) -> RunCommit {
    RunCommit {
        expected_next_seq,
        events,
        record: None,
        evidence: None,
        envelope: None,
    }
}

/// A byte stream of `data` in 1000-byte chunks.
pub fn stream_of(data: &[u8]) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// No limit, no descriptor.
pub fn any_blob() -> BlobExpect<'static> {
    BlobExpect {
        descriptor: None,
        max_bytes: u64::MAX,
    }
}

/// Reads a whole blob reader.
pub fn read_all(mut r: BlobReader) -> Vec<u8> {
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut v).unwrap();
    v
}

/// An engine on `store` with a process backend whose work root is under `work`.
pub async fn engine_on(
    store: PostgresStore,
    work: &std::path::Path,
    config: crownest_core::EngineConfig,
) -> crownest_core::WorkspaceRuns {
    use crownest_backend_process::{ProcessBackend, ProcessConfig};
    let backend = ProcessBackend::new(ProcessConfig::with_root(work.join("sandboxes"))).unwrap();
    crownest_core::WorkspaceRuns::builder(std::sync::Arc::new(store))
        .backend(std::sync::Arc::new(backend))
        .config(config)
        .open()
        .await
        .unwrap()
}
