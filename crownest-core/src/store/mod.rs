//! The [`Store`] trait: durable runs, events, blobs, transfers and evidence.
//!
//! Beside the trait, what every implementation shares: `commit.rs`, the pure commit rule
//! ([`prepare_commit`]: check, seal, check the evidence, compute the new record), and
//! `blob_dir.rs`, the content-addressed blob directory on disk ([`blob_dir::BlobDir`]) the
//! SQLite and PostgreSQL stores keep their bytes in.

pub mod blob_dir;
mod commit;
pub mod coordination;

pub use commit::{
    PreparedCommit, check_blob_expectations, check_commit, check_sealed_evidence, prepare_commit,
};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Read;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, NewEvent};
use crate::evidence::EvidenceBundle;
use crate::gc::{GcPolicy, StoreGcReport};
use crate::ids::{ArtifactId, RunId, Sha256Digest, TransferId};
use crate::run::{ArchiveDescriptor, Artifact, RunRecord};
use crate::signing::DsseEnvelope;
use crate::status::RunStatus;
use crate::time::Timestamp;

/// What a store holds, counted by one aggregate query ([`Store::usage`]): the gauges of
/// `/metrics` start from it and are kept up to date in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreUsage {
    /// Runs per status (a status with no run is absent or 0).
    pub runs_by_status: BTreeMap<RunStatus, u64>,
    /// Bytes of the stored blobs (archives and artifacts, each stored once), when the store
    /// can count them cheaply.
    pub blob_bytes: Option<u64>,
}

/// A stream of bytes fed into [`Store::put_blob`].
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A blocking reader of stored bytes (used from blocking threads by the extractor).
pub type BlobReader = Box<dyn Read + Send>;

/// Result of [`Store::create_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new run was stored.
    Created(RunRecord),
    /// A run with the same idempotency key already existed; it is returned unchanged.
    Existing(RunRecord),
}

impl CreateOutcome {
    /// The run, new or existing.
    pub fn into_run(self) -> RunRecord {
        match self {
            Self::Created(r) | Self::Existing(r) => r,
        }
    }
}

/// A page query over runs, newest first. Every filter given must hold
/// ([`RunQuery::matches`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// At most this many (0 = the store's default of 100).
    pub limit: usize,
    /// Only runs older than this id (the last id of the previous page).
    pub before: Option<RunId>,
    /// Only runs on this backend (the resolved one, `RunRecord::backend`).
    pub backend: Option<String>,
    /// Only runs whose spec has every one of these labels with this value.
    pub labels: BTreeMap<String, String>,
    /// Only runs created at or after this time.
    pub created_after: Option<Timestamp>,
    /// Only runs created before this time.
    pub created_before: Option<Timestamp>,
}

impl RunQuery {
    /// The filters (status, backend, labels, creation time; not the paging) as one rule,
    /// for stores that filter in memory and for tests of those that filter elsewhere.
    pub fn matches(&self, run: &RunRecord) -> bool {
        let created = run.timestamps.created;
        self.status.is_none_or(|s| run.status == s)
            && self.backend.as_ref().is_none_or(|b| run.backend == *b)
            && self
                .labels
                .iter()
                .all(|(k, v)| run.spec.labels.get(k) == Some(v))
            && self
                .created_after
                .is_none_or(|t| created.is_some_and(|c| c >= t))
            && self
                .created_before
                .is_none_or(|t| created.is_some_and(|c| c < t))
    }
}

/// One atomic write to a run: events, the new record, and (with `terminal`) the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommit {
    /// Must equal the run's `next_seq`, else [`Error::Conflict`] and nothing is written.
    pub expected_next_seq: u64,
    /// Events to seal and append, in order.
    pub events: Vec<NewEvent>,
    /// The run record to store (all fields but `next_seq`, `chain_head` and
    /// `cancel_requested`, which the store maintains).
    pub record: Option<RunRecord>,
    /// Required exactly when `events` ends with `terminal`.
    pub evidence: Option<EvidenceBundle>,
    /// The evidence's signed DSSE envelope, stored with it (only with `evidence`).
    pub envelope: Option<DsseEnvelope>,
}

/// What a stored blob is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobInfo {
    /// sha256 of the bytes.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// Expectations checked while a blob streams in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobExpect<'a> {
    /// Declared size and digest, if any.
    pub descriptor: Option<&'a ArchiveDescriptor>,
    /// Refuse (as `too_large`) once more bytes than this arrive.
    pub max_bytes: u64,
}

/// A staged transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRecord {
    /// Id.
    pub transfer_id: TransferId,
    /// The run it uploads for.
    pub run_id: RunId,
    /// Declared size and digest of the whole.
    pub descriptor: ArchiveDescriptor,
    /// Every chunk but the last has exactly this size; offsets are multiples of it.
    pub chunk_size_bytes: u64,
    /// Indices of chunks received.
    pub received: BTreeSet<u64>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl TransferRecord {
    /// Number of chunks of the whole.
    pub fn chunk_count(&self) -> u64 {
        self.descriptor
            .size_bytes
            .div_ceil(self.chunk_size_bytes)
            .max(1)
    }

    /// Exact length chunk `index` must have; `None` if out of range.
    pub fn chunk_len(&self, index: u64) -> Option<u64> {
        let n = self.chunk_count();
        if index >= n {
            return None;
        }
        if self.descriptor.size_bytes == 0 {
            return Some(0);
        }
        Some(if index + 1 == n {
            self.descriptor.size_bytes - index * self.chunk_size_bytes
        } else {
            self.chunk_size_bytes
        })
    }

    /// Validates a chunk by offset and length, returning its index.
    pub fn check_chunk(&self, offset: u64, len: u64) -> Result<u64> {
        if !offset.is_multiple_of(self.chunk_size_bytes) {
            return Err(Error::invalid(
                "offset",
                format!(
                    "{offset} is not a multiple of the chunk size {}",
                    self.chunk_size_bytes
                ),
            ));
        }
        let index = offset / self.chunk_size_bytes;
        match self.chunk_len(index) {
            None => Err(Error::invalid(
                "offset",
                format!(
                    "{offset} is beyond the declared size {}",
                    self.descriptor.size_bytes
                ),
            )),
            Some(want) if want != len => Err(Error::invalid(
                "chunk",
                format!("chunk at offset {offset} must be {want} bytes, got {len}"),
            )),
            Some(_) => Ok(index),
        }
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
            .iter()
            .filter_map(|&i| self.chunk_len(i))
            .sum()
    }

    /// Missing byte ranges `[start, end)`, merged.
    pub fn missing_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..self.chunk_count() {
            if self.received.contains(&i) {
                continue;
            }
            let start = i * self.chunk_size_bytes;
            let end = start + self.chunk_len(i).unwrap_or(0);
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        out
    }

    /// True when every chunk is here.
    pub fn is_complete(&self) -> bool {
        self.received.len() as u64 == self.chunk_count()
    }

    /// The error of a chunk whose bytes differ from the chunk already stored at `index`
    /// (every store words it the same).
    pub fn chunk_conflict(&self, index: u64) -> Error {
        Error::ChunkRejected {
            offset: index.saturating_mul(self.chunk_size_bytes),
            reason: crate::error::ChunkRejectReason::Conflict,
            message: format!(
                "chunk {index} of transfer {} was already received with other bytes; the \
                 stored chunk is kept (send the same bytes, or begin a new transfer)",
                self.transfer_id
            ),
        }
    }
}

/// Durable storage of runs, events, blobs, transfers and evidence.
///
/// # Contract
///
/// * `create_run` stores a new run; a second create with the same `idempotency_key`
///   returns the first run as `Existing` and stores nothing.
/// * A run comes back with its spec exactly as it was created (also as `Existing`), so
///   the engine can refuse a reused idempotency key whose request differs
///   ([`RunRecord::same_request`]).
/// * `get_run` of an unknown id is `Error::NotFound`.
/// * `list_runs` returns runs newest first, filtered as [`RunQuery::matches`] says (status,
///   backend, labels, creation time), paged with `before`; `limit` counts matching runs.
/// * `delete_run` deletes an ended run with its events, evidence, artifact records and
///   transfers (the blobs they named become unnamed, for garbage collection): afterwards
///   `get_run`, `list_events`, `get_evidence` and `get_artifact` answer `NotFound`, and its
///   idempotency key is free. A run that has not ended is `Error::InvalidTransition`
///   (input `delete`) and nothing changes; an unknown run is `NotFound`.
/// * `commit` is atomic and all-or-nothing: it checks `expected_next_seq` (else
///   `Error::Conflict`), seals the events with gap-free seqs from the run's `next_seq` and
///   the hash chain ([`crate::event::seal_all`]), stores the record and the evidence.
/// * A `terminal` event must be the last of its batch, must come with evidence whose
///   `terminal_event` equals the sealed event, and nothing can be appended after it.
/// * `commit` never changes `cancel_requested`; `request_cancel` sets it.
/// * An event is visible to `list_events` only once its commit returned; `list_events`
///   returns events with `seq > after_seq` in order, at most `limit`.
/// * Durability: a write that returned survives a crash of any process. A store may defer
///   making writes durable against an OS crash or power loss (the SQLite store does for
///   everything but terminal commits and deletions), but then such a loss drops a *suffix*
///   of the writes, never one while keeping a later one; and a commit with a `terminal`
///   event is durable, with every write before it, when it returns. Files a write deletes
///   are deleted only after that write is durable. (`docs/engine.md`, "Durability".)
/// * `put_blob` hashes and counts while streaming; a size or digest differing from the
///   declared descriptor, or more than `max_bytes`, is `Error::ArchiveRejected` and keeps
///   nothing. Blobs are content-addressed: the same bytes are stored once.
/// * `has_blob` and `open_blob` see a blob as soon as `put_blob` returned.
/// * `discard_blob` deletes a blob only when no run names it as its archive and no artifact
///   names it, and says whether it deleted it (an unknown blob is `Ok(false)`).
/// * Transfers: `put_chunk` is idempotent and accepts chunks in any order; `open_transfer`
///   yields the chunks concatenated in order, and fails if one is missing.
/// * `put_chunk` of an index already received with *other* bytes is
///   `Error::ChunkRejected { reason: Conflict }` ([`TransferRecord::chunk_conflict`]) and
///   changes nothing: the stored chunk stays as it was. The same bytes again are accepted.
/// * `list_transfers` returns every stored transfer (of one run, when given) with its
///   received chunks; a deleted transfer is not listed.
/// * `collect_garbage` never deletes a blob a run or an artifact names, a blob stored (or
///   stored again) less than `blob_grace` ago, or a transfer created or given a chunk less
///   than `transfer_ttl` ago; past those ages it deletes unnamed blobs and idle transfers,
///   and it reports what it deleted.
/// * `get_evidence` of a run that has not ended is `Error::NotTerminal`.
/// * `get_evidence_envelope` returns the envelope committed with the evidence, unchanged, or
///   `None` when the evidence came without one; before the end it is `Error::NotTerminal`.
/// * `get_artifact` finds an artifact of any run by id.
/// * `list_unfinished` returns every run not in a terminal state.
/// * `usage` counts every stored run once, under its current status, and (when it reports
///   them) the bytes of the stored blobs; deleted runs are not counted. It is one aggregate
///   query, not a listing (the default, for stores that have nothing better, pages through
///   `list_runs`).
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Stores a new run (or returns the one with the same idempotency key).
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome>;
    /// [`create_run`](Self::create_run) and, when it created the run, `first` (the run's
    /// first commit) with it: one write where the store can make it one (the SQLite store),
    /// else `create_run` then [`commit`](Self::commit), which is the default. Returns the
    /// outcome and the events `first` sealed (none for an existing run, which `first` does
    /// not touch).
    async fn create_run_with(
        &self,
        run: RunRecord,
        first: RunCommit,
    ) -> Result<(CreateOutcome, Vec<Event>)> {
        let id = run.id.clone();
        let outcome = self.create_run(run).await?;
        let sealed = match &outcome {
            CreateOutcome::Created(_) => self.commit(&id, first).await?,
            CreateOutcome::Existing(_) => Vec::new(),
        };
        Ok((outcome, sealed))
    }
    /// One run.
    async fn get_run(&self, id: &RunId) -> Result<RunRecord>;
    /// Runs, newest first.
    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>>;
    /// Runs not in a terminal state.
    async fn list_unfinished(&self) -> Result<Vec<RunRecord>>;
    /// Atomically appends events and stores the record (and evidence).
    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>>;
    /// Marks the run as cancel-requested (for a driver in another process to see).
    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord>;
    /// A window of events after `after_seq`.
    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>>;
    /// Streams bytes into a content-addressed blob.
    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo>;
    /// Size of a stored blob, if present.
    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>>;
    /// Opens a stored blob for blocking reads.
    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader>;
    /// Deletes a blob that no run and no artifact names (e.g. a refused archive); returns
    /// whether it was deleted.
    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool>;
    /// Stores a new transfer.
    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()>;
    /// One transfer.
    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord>;
    /// Stores chunk `index` (its length already checked by the caller); other bytes for a
    /// chunk already stored are refused.
    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord>;
    /// The received chunks concatenated in order.
    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader>;
    /// Forgets a transfer and its chunks.
    async fn delete_transfer(&self, id: &TransferId) -> Result<()>;
    /// Stored transfers, of one run or of all.
    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>>;
    /// One garbage-collection pass with these ages.
    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport>;
    /// The Evidence Bundle of an ended run.
    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle>;
    /// The DSSE envelope stored with an ended run's evidence (`None` when it was stored
    /// without one); `NotTerminal` before the run ended.
    async fn get_evidence_envelope(&self, id: &RunId) -> Result<Option<DsseEnvelope>>;
    /// One artifact by id.
    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact>;
    /// Deletes an ended run and everything recorded about it (retention).
    async fn delete_run(&self, id: &RunId) -> Result<()>;
    /// Leases and the shared queue, for a store several engines share
    /// ([`coordination`]); `None` (the default) for a store one host owns.
    fn coordination(&self) -> Option<&dyn coordination::Coordination> {
        None
    }
    /// Runs per status and blob bytes (for metrics), by one aggregate query.
    async fn usage(&self) -> Result<StoreUsage> {
        let mut usage = StoreUsage::default();
        let mut before = None;
        loop {
            let page = self
                .list_runs(&RunQuery {
                    limit: 1000,
                    before: before.clone(),
                    ..RunQuery::default()
                })
                .await?;
            for run in &page {
                *usage.runs_by_status.entry(run.status).or_default() += 1;
            }
            match page.last() {
                Some(last) if page.len() == 1000 => before = Some(last.id.clone()),
                _ => return Ok(usage),
            }
        }
    }
}
