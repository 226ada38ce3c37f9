//! [`MemoryStore`]: a complete in-memory [`Store`] for tests and embedding without
//! durability. Everything is lost when it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, RejectReason, Result};
use crate::event::Event;
use crate::evidence::EvidenceBundle;
use crate::gc::{GcPolicy, StoreGcReport};
use crate::ids::{ArtifactId, RunId, Sha256Digest, TransferId};
use crate::run::{Artifact, RunRecord};
use crate::store::{
    BlobExpect, BlobInfo, BlobReader, ByteStream, CreateOutcome, PreparedCommit, RunCommit,
    RunQuery, Store, TransferRecord, check_blob_expectations, prepare_commit,
};

#[derive(Debug, Default)]
struct Inner {
    runs: BTreeMap<RunId, RunRecord>,
    events: HashMap<RunId, Vec<Event>>,
    idempotency: HashMap<String, RunId>,
    evidence: HashMap<RunId, EvidenceBundle>,
    envelopes: HashMap<RunId, crate::signing::DsseEnvelope>,
    blobs: HashMap<Sha256Digest, StoredBlob>,
    transfers: HashMap<TransferId, StoredTransfer>,
}

#[derive(Debug)]
struct StoredBlob {
    bytes: Bytes,
    /// Stored, or stored again (for `blob_grace`).
    stored_at: Instant,
}

#[derive(Debug)]
struct StoredTransfer {
    record: TransferRecord,
    chunks: BTreeMap<u64, Bytes>,
    /// Created, or last given a chunk (for `transfer_ttl`).
    touched: Instant,
}

impl Inner {
    /// Does a run name this blob as its archive, or an artifact as its bytes?
    fn blob_is_named(&self, sha256: &Sha256Digest) -> bool {
        self.runs.values().any(|r| {
            r.archive.as_ref().is_some_and(|a| a.sha256 == *sha256)
                || r.artifacts.iter().any(|a| a.sha256 == *sha256)
        })
    }
}

/// An in-memory [`Store`]. Cheap to create; passes the whole conformance suite.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Calls of `commit` (each one transaction of a durable store).
    commits: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times [`Store::commit`] was called (for tests of how many transactions a
    /// path of the engine takes).
    pub fn commit_calls(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written commit: every mutation
        // below is prepared first and applied without early returns.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hashes and counts a byte stream against its expectations (shared by stores that buffer).
pub async fn collect_verified(
    mut data: ByteStream,
    expect: BlobExpect<'_>,
) -> Result<(Bytes, BlobInfo)> {
    let mut buf = BytesMut::new();
    let mut hasher = Sha256::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| Error::io("reading upload", e))?;
        if (buf.len() + chunk.len()) as u64 > expect.max_bytes {
            return Err(Error::rejected(
                RejectReason::TooLarge,
                None,
                format!("upload exceeds the limit of {} bytes", expect.max_bytes),
            ));
        }
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    let info = BlobInfo {
        sha256: Sha256Digest::from_bytes(&hasher.finalize().into()),
        size_bytes: buf.len() as u64,
    };
    check_blob_expectations(&info, expect)?;
    Ok((buf.freeze(), info))
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome> {
        let mut g = self.lock();
        if let Some(key) = &run.spec.idempotency_key
            && let Some(existing) = g.idempotency.get(key)
        {
            let existing = g.runs[existing].clone();
            return Ok(CreateOutcome::Existing(existing));
        }
        if g.runs.contains_key(&run.id) {
            return Err(Error::Conflict {
                message: format!("run {} already exists", run.id),
            });
        }
        if let Some(key) = &run.spec.idempotency_key {
            g.idempotency.insert(key.clone(), run.id.clone());
        }
        g.events.insert(run.id.clone(), Vec::new());
        g.runs.insert(run.id.clone(), run.clone());
        Ok(CreateOutcome::Created(run))
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        self.lock()
            .runs
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found("run", id))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        let g = self.lock();
        let limit = if query.limit == 0 { 100 } else { query.limit };
        Ok(g.runs
            .values()
            .rev()
            .filter(|r| query.before.as_ref().is_none_or(|b| r.id < *b))
            .filter(|r| query.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list_unfinished(&self) -> Result<Vec<RunRecord>> {
        Ok(self
            .lock()
            .runs
            .values()
            .filter(|r| !r.status.is_terminal())
            .cloned()
            .collect())
    }

    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut g = self.lock();
        let stored = g
            .runs
            .get(id)
            .ok_or_else(|| Error::not_found("run", id))?
            .clone();
        let PreparedCommit {
            events: sealed,
            record,
            evidence,
            envelope,
        } = prepare_commit(id, &stored, commit)?;
        if let Some(env) = envelope {
            g.envelopes.insert(id.clone(), env);
        }
        if let Some(ev) = evidence {
            g.evidence.insert(id.clone(), ev);
        }
        g.events
            .entry(id.clone())
            .or_default()
            .extend(sealed.iter().cloned());
        g.runs.insert(id.clone(), record);
        Ok(sealed)
    }

    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord> {
        let mut g = self.lock();
        let run = g
            .runs
            .get_mut(id)
            .ok_or_else(|| Error::not_found("run", id))?;
        if !run.status.is_terminal() {
            run.cancel_requested = true;
        }
        Ok(run.clone())
    }

    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let g = self.lock();
        let events = g
            .events
            .get(id)
            .ok_or_else(|| Error::not_found("run", id))?;
        let start = usize::try_from(after_seq)
            .unwrap_or(usize::MAX)
            .min(events.len());
        Ok(events[start..].iter().take(limit).cloned().collect())
    }

    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo> {
        let (bytes, info) = collect_verified(data, expect).await?;
        self.lock()
            .blobs
            .entry(info.sha256.clone())
            .and_modify(|b| b.stored_at = Instant::now())
            .or_insert(StoredBlob {
                bytes,
                stored_at: Instant::now(),
            });
        Ok(info)
    }

    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        Ok(self.lock().blobs.get(sha256).map(|b| b.bytes.len() as u64))
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        let bytes = self
            .lock()
            .blobs
            .get(sha256)
            .map(|b| b.bytes.clone())
            .ok_or_else(|| Error::not_found("blob", sha256))?;
        Ok(Box::new(Cursor::new(bytes)))
    }

    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        let mut g = self.lock();
        if g.blob_is_named(sha256) {
            return Ok(false);
        }
        Ok(g.blobs.remove(sha256).is_some())
    }

    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()> {
        let mut record = transfer.clone();
        record.received.clear();
        self.lock().transfers.insert(
            transfer.transfer_id.clone(),
            StoredTransfer {
                record,
                chunks: BTreeMap::new(),
                touched: Instant::now(),
            },
        );
        Ok(())
    }

    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord> {
        self.lock()
            .transfers
            .get(id)
            .map(|t| t.record.clone())
            .ok_or_else(|| Error::not_found("transfer", id))
    }

    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord> {
        let mut g = self.lock();
        let t = g
            .transfers
            .get_mut(id)
            .ok_or_else(|| Error::not_found("transfer", id))?;
        if t.record.chunk_len(index) != Some(data.len() as u64) {
            return Err(Error::invalid(
                "chunk",
                format!("chunk {index} has the wrong length"),
            ));
        }
        if let Some(stored) = t.chunks.get(&index)
            && *stored != data
        {
            return Err(t.record.chunk_conflict(index));
        }
        t.chunks.insert(index, data);
        t.record.received.insert(index);
        t.touched = Instant::now();
        Ok(t.record.clone())
    }

    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader> {
        let g = self.lock();
        let t = g
            .transfers
            .get(id)
            .ok_or_else(|| Error::not_found("transfer", id))?;
        if !t.record.is_complete() {
            return Err(Error::invalid("transfer", "chunks are missing"));
        }
        let mut all =
            BytesMut::with_capacity(usize::try_from(t.record.descriptor.size_bytes).unwrap_or(0));
        for c in t.chunks.values() {
            all.extend_from_slice(c);
        }
        Ok(Box::new(Cursor::new(all.freeze())))
    }

    async fn delete_transfer(&self, id: &TransferId) -> Result<()> {
        self.lock().transfers.remove(id);
        Ok(())
    }

    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>> {
        Ok(self
            .lock()
            .transfers
            .values()
            .filter(|t| run.is_none_or(|r| t.record.run_id == *r))
            .map(|t| t.record.clone())
            .collect())
    }

    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport> {
        let mut g = self.lock();
        let mut report = StoreGcReport::default();
        let stale_blobs: Vec<Sha256Digest> = g
            .blobs
            .iter()
            .filter(|(sha, b)| b.stored_at.elapsed() >= policy.blob_grace && !g.blob_is_named(sha))
            .map(|(sha, _)| sha.clone())
            .collect();
        for sha in stale_blobs {
            if let Some(b) = g.blobs.remove(&sha) {
                report.blobs_deleted += 1;
                report.blob_bytes_freed += b.bytes.len() as u64;
            }
        }
        let before = g.transfers.len();
        g.transfers
            .retain(|_, t| t.touched.elapsed() < policy.transfer_ttl);
        report.transfers_deleted = (before - g.transfers.len()) as u64;
        Ok(report)
    }

    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        let g = self.lock();
        if let Some(ev) = g.evidence.get(id) {
            return Ok(ev.clone());
        }
        if g.runs.contains_key(id) {
            Err(Error::NotTerminal {
                run_id: id.to_string(),
            })
        } else {
            Err(Error::not_found("run", id))
        }
    }

    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crate::signing::DsseEnvelope>> {
        self.get_evidence(id).await?;
        Ok(self.lock().envelopes.get(id).cloned())
    }

    async fn delete_run(&self, id: &RunId) -> Result<()> {
        let mut g = self.lock();
        let run = g.runs.get(id).ok_or_else(|| Error::not_found("run", id))?;
        if !run.status.is_terminal() {
            return Err(Error::InvalidTransition {
                from: run.status,
                input: "delete",
            });
        }
        let key = run.spec.idempotency_key.clone();
        if let Some(key) = key
            && g.idempotency.get(&key) == Some(id)
        {
            g.idempotency.remove(&key);
        }
        g.runs.remove(id);
        g.events.remove(id);
        g.evidence.remove(id);
        g.envelopes.remove(id);
        g.transfers.retain(|_, t| t.record.run_id != *id);
        Ok(())
    }

    async fn usage(&self) -> Result<crate::store::StoreUsage> {
        let g = self.lock();
        let mut usage = crate::store::StoreUsage {
            blob_bytes: Some(g.blobs.values().map(|b| b.bytes.len() as u64).sum()),
            ..Default::default()
        };
        for run in g.runs.values() {
            *usage.runs_by_status.entry(run.status).or_default() += 1;
        }
        Ok(usage)
    }

    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.lock()
            .runs
            .values()
            .flat_map(|r| r.artifacts.iter())
            .find(|a| a.artifact_id == *id)
            .cloned()
            .ok_or_else(|| Error::not_found("artifact", id))
    }
}
