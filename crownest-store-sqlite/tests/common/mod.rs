//! Test support: a `SqliteStore` that owns (and removes) its temporary directory.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

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
use crownest_store_sqlite::{GcPolicy, SqliteConfig, SqliteStore, StoreGcReport};

/// A store in a temp dir that is removed when the store is dropped.
#[derive(Debug)]
pub struct TempStore {
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub async fn open() -> Self {
        Self::open_with(SqliteConfig::default()).await
    }

    pub async fn open_with(config: SqliteConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(dir.path(), config).await.unwrap();
        Self { store, dir }
    }
}

impl Deref for TempStore {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
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
    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crownest_core::signing::DsseEnvelope>> {
        self.store.get_evidence_envelope(id).await
    }
    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.store.get_artifact(id).await
    }
    async fn delete_run(&self, id: &RunId) -> Result<()> {
        self.store.delete_run(id).await
    }
    async fn usage(&self) -> Result<crownest_core::store::StoreUsage> {
        self.store.usage().await
    }
}

use crownest_core::event::{EventKind, NewEvent, OutputChunk, seal};
use crownest_core::run::RunOwner;
use crownest_core::{Limits, RunSpec, RunStatus, Timestamp};
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

/// The terminal commit, built as the engine builds it.
pub fn terminal_commit(stored: &RunRecord) -> RunCommit {
    let mut record = stored.clone();
    record.status = RunStatus::Succeeded;
    record.exit_code = Some(0);
    record.timestamps.terminal = Some(Timestamp::now());
    let terminal = NewEvent::now(EventKind::Terminal {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        failure: None,
        duration_ms: 1,
        output: None,
        sandbox: None,
        crownest_version: None,
        bundle_digest: None,
    });
    let sealed = seal(
        &stored.chain_head,
        &stored.id,
        stored.next_seq,
        terminal.clone(),
    );
    let evidence = EvidenceBundle::build(&record, None, None, None, sealed);
    RunCommit {
        expected_next_seq: stored.next_seq,
        events: vec![terminal],
        record: Some(record),
        evidence: Some(evidence),
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

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
