//! Archive intake: direct upload, staged transfer, attach-by-digest. Bytes are counted and
//! hashed while they stream into the store, and in the same pass inflated and checked
//! against the extraction policy (and extracted into a tree prepared for `start`, see
//! `prepare.rs`), so a hostile archive is refused here, before any run starts. A refused
//! upload leaves the run in `awaiting_archive` with an `error` event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument as _;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::prepare;
use super::rejected::VerifyingGuard;
use super::{WorkspaceRuns, lock};
use crate::archive::{ExtractPolicy, ExtractSummary};
use crate::error::{ChunkRejectReason, Error, Result};
use crate::event::{ArchivePhase, EventKind, NewEvent};
use crate::ids::{RunId, Sha256Digest, TransferId};
use crate::lifecycle::{self, Input, transition};
use crate::run::{ArchiveDescriptor, ArchiveInfo, RunRecord, UploadKind};
use crate::status::RunStatus;
use crate::store::{BlobExpect, BlobReader, ByteStream, TransferRecord};
use crate::time::Timestamp;

/// Status of a staged transfer, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    /// Id.
    pub transfer_id: TransferId,
    /// The run.
    pub run_id: RunId,
    /// Declared size and digest.
    #[serde(flatten)]
    pub descriptor: ArchiveDescriptor,
    /// Chunk size: every chunk but the last has exactly this size.
    pub chunk_size_bytes: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Missing byte ranges `[start, end)`.
    pub missing: Vec<[u64; 2]>,
    /// All chunks are here.
    pub complete: bool,
}

impl From<&TransferRecord> for TransferStatus {
    fn from(t: &TransferRecord) -> Self {
        Self {
            transfer_id: t.transfer_id.clone(),
            run_id: t.run_id.clone(),
            descriptor: t.descriptor.clone(),
            chunk_size_bytes: t.chunk_size_bytes,
            bytes_received: t.bytes_received(),
            missing: t
                .missing_ranges()
                .into_iter()
                .map(|(a, b)| [a, b])
                .collect(),
            complete: t.is_complete(),
        }
    }
}

/// Turns a blocking reader (e.g. [`crate::Store::open_blob`]) into a byte stream of
/// 256 KiB chunks, read on a blocking thread with a small bounded buffer.
pub fn reader_stream(mut reader: BlobReader) -> ByteStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

impl WorkspaceRuns {
    /// Is an archive with this digest already stored? If so, a client can skip the upload
    /// and [`WorkspaceRuns::attach_archive`] it by digest.
    pub async fn has_archive(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        self.inner.store.has_blob(sha256).await
    }

    /// Direct upload of a whole archive held in memory (≤ `direct_upload_max_bytes`).
    pub async fn upload_archive(
        &self,
        id: &RunId,
        descriptor: &ArchiveDescriptor,
        bytes: Bytes,
    ) -> Result<RunRecord> {
        let stream = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.upload_archive_stream(id, descriptor, stream).await
    }

    /// Direct upload from a byte stream (≤ `direct_upload_max_bytes`).
    pub async fn upload_archive_stream(
        &self,
        id: &RunId,
        descriptor: &ArchiveDescriptor,
        data: ByteStream,
    ) -> Result<RunRecord> {
        let max = self.inner.config.direct_upload_max_bytes;
        if descriptor.size_bytes > max {
            return Err(Error::LimitExceeded {
                limit: "directUploadMaxBytes",
                max,
            });
        }
        self.intake(id, descriptor, data, max, UploadKind::Direct)
            .await
    }

    /// Upload for a host that reads the archive itself (the local CLI reading a file):
    /// one stream of any size up to `staged_upload_max_bytes`, with no direct/staged split
    /// and no pre-pass. With `expected`, the bytes are checked against it as any upload's;
    /// without, the store computes their size and sha256 while they stream in, and that is
    /// what the run records (`archive_verified`, the evidence). Recorded as a `direct`
    /// upload. Across a trust boundary, clients declare what they send
    /// ([`upload_archive_stream`](Self::upload_archive_stream), staged transfers).
    pub async fn receive_archive(
        &self,
        id: &RunId,
        expected: Option<&ArchiveDescriptor>,
        size_hint: u64,
        data: ByteStream,
    ) -> Result<RunRecord> {
        self.receive(id, expected, size_hint, data, false).await
    }

    /// [`receive_archive`](Self::receive_archive), then [`start`](Self::start) (the local CLI's
    /// `run`): when a slot is free, the archive's `archive_ready` and the start's `queued`
    /// and `starting` are one commit instead of two (and the run is not read again); else
    /// the archive is committed alone and the run is started as `start` does. The events
    /// are those of the two calls, in the same order. A refused archive starts nothing.
    pub async fn receive_archive_and_start(
        &self,
        id: &RunId,
        expected: Option<&ArchiveDescriptor>,
        size_hint: u64,
        data: ByteStream,
    ) -> Result<RunRecord> {
        let record = self.receive(id, expected, size_hint, data, true).await?;
        if record.status == RunStatus::ArchiveReady {
            return self.start(id).await;
        }
        Ok(record)
    }

    async fn receive(
        &self,
        id: &RunId,
        expected: Option<&ArchiveDescriptor>,
        size_hint: u64,
        data: ByteStream,
        then_start: bool,
    ) -> Result<RunRecord> {
        let max = self.inner.config.staged_upload_max_bytes;
        if let Some(d) = expected
            && d.size_bytes > max
        {
            return Err(Error::LimitExceeded {
                limit: "stagedUploadMaxBytes",
                max,
            });
        }
        let size_hint = expected.map_or(size_hint, |d| d.size_bytes);
        self.intake_in_span(
            id,
            expected,
            size_hint,
            data,
            Upload::direct(max, then_start),
        )
        .instrument(super::observe::run_span(id))
        .await
    }

    /// Attaches an archive already stored (by digest) to a run, after checking it against
    /// this run's extraction policy.
    pub async fn attach_archive(
        &self,
        id: &RunId,
        descriptor: &ArchiveDescriptor,
    ) -> Result<RunRecord> {
        let run_lock = self.run_lock(id);
        let _guard = run_lock.lock().await;
        let mut record = self.get(id).await?;
        transition(record.status, Input::ArchiveVerified)?;
        let verifying = self.inner.verifying.begin(&descriptor.sha256);
        match self.inner.store.has_blob(&descriptor.sha256).await? {
            Some(size) if size == descriptor.size_bytes => {}
            Some(size) => {
                return Err(Error::rejected(
                    crate::error::RejectReason::SizeMismatch,
                    None,
                    format!(
                        "declared {} bytes, stored archive has {size}",
                        descriptor.size_bytes
                    ),
                ));
            }
            None => return Err(Error::not_found("archive", &descriptor.sha256)),
        }
        self.verify_stored(&mut record, descriptor, UploadKind::Existing, &verifying)
            .instrument(super::observe::run_span(id))
            .await
    }

    /// Begins a staged transfer for a run in `awaiting_archive`.
    pub async fn begin_transfer(
        &self,
        id: &RunId,
        descriptor: &ArchiveDescriptor,
    ) -> Result<TransferStatus> {
        let record = self.get(id).await?;
        transition(record.status, Input::ArchiveVerified)?;
        let max = self.inner.config.staged_upload_max_bytes;
        if descriptor.size_bytes > max {
            return Err(Error::LimitExceeded {
                limit: "stagedUploadMaxBytes",
                max,
            });
        }
        let t = TransferRecord {
            transfer_id: TransferId::new(),
            run_id: id.clone(),
            descriptor: descriptor.clone(),
            chunk_size_bytes: self.inner.config.chunk_size_bytes.max(1),
            received: Default::default(),
            created_at: Timestamp::now(),
        };
        self.create_transfer_within_caps(&t).await?;
        Ok((&t).into())
    }

    /// Stores one chunk at `offset` (a multiple of the chunk size; exact length). Idempotent;
    /// chunks may arrive in any order and be resent after a dropped connection. Sending
    /// other bytes for a chunk already received is refused
    /// (`ChunkRejected { reason: Conflict }`) and keeps the stored chunk.
    pub async fn put_chunk(
        &self,
        transfer: &TransferId,
        offset: u64,
        data: Bytes,
    ) -> Result<TransferStatus> {
        self.put_chunk_checked(transfer, offset, data, None).await
    }

    /// [`put_chunk`](Self::put_chunk) of a chunk sent with its sha256: bytes that do not
    /// have it are refused (`ChunkRejected { reason: DigestMismatch }`) before anything is
    /// stored, so a chunk corrupted on the way never replaces or joins what was received.
    pub async fn put_chunk_checked(
        &self,
        transfer: &TransferId,
        offset: u64,
        data: Bytes,
        sha256: Option<&Sha256Digest>,
    ) -> Result<TransferStatus> {
        let t = self.inner.store.get_transfer(transfer).await?;
        let index = t.check_chunk(offset, data.len() as u64)?;
        if let Some(declared) = sha256 {
            let actual = Sha256Digest::of(&data);
            if actual != *declared {
                return Err(Error::ChunkRejected {
                    offset,
                    reason: ChunkRejectReason::DigestMismatch,
                    message: format!("declared sha256 {declared}, received {actual}"),
                });
            }
        }
        let t = self.inner.store.put_chunk(transfer, index, data).await?;
        Ok((&t).into())
    }

    /// Bytes received and missing ranges.
    pub async fn transfer_status(&self, transfer: &TransferId) -> Result<TransferStatus> {
        Ok((&self.inner.store.get_transfer(transfer).await?).into())
    }

    /// Verifies the whole transfer (size, sha256, extraction policy) and attaches it to its
    /// run. On a size or digest mismatch the transfer is discarded (start a new one); on
    /// missing chunks it is kept so the client can resume.
    pub async fn complete_transfer(&self, transfer: &TransferId) -> Result<RunRecord> {
        let t = self.inner.store.get_transfer(transfer).await?;
        if !t.is_complete() {
            return Err(Error::TransferIncomplete {
                transfer_id: transfer.to_string(),
                missing: t
                    .missing_ranges()
                    .into_iter()
                    .map(|(a, b)| [a, b])
                    .collect(),
            });
        }
        let reader = self.inner.store.open_transfer(transfer).await?;
        let result = self
            .intake(
                &t.run_id,
                &t.descriptor,
                reader_stream(reader),
                self.inner.config.staged_upload_max_bytes,
                UploadKind::Staged,
            )
            .await;
        if !matches!(
            result,
            Err(Error::InvalidTransition { .. }) | Err(Error::Conflict { .. })
        ) {
            self.inner.store.delete_transfer(transfer).await?;
        }
        result
    }

    async fn intake(
        &self,
        id: &RunId,
        descriptor: &ArchiveDescriptor,
        data: ByteStream,
        max_bytes: u64,
        kind: UploadKind,
    ) -> Result<RunRecord> {
        let size = descriptor.size_bytes;
        let how = Upload {
            max_bytes,
            kind,
            then_start: false,
        };
        self.intake_in_span(id, Some(descriptor), size, data, how)
            .instrument(super::observe::run_span(id))
            .await
    }

    async fn intake_in_span(
        &self,
        id: &RunId,
        declared: Option<&ArchiveDescriptor>,
        size_hint: u64,
        data: ByteStream,
        how: Upload,
    ) -> Result<RunRecord> {
        let Upload {
            max_bytes,
            kind,
            then_start,
        } = how;
        let guard = self.run_lock(id).lock_owned().await;
        let mut record = self.get(id).await?;
        transition(record.status, Input::ArchiveVerified)?;
        // Before the bytes land, so a refusal of the same bytes elsewhere keeps them (an
        // undeclared upload learns its digest only when stored: it registers then).
        let early = declared.map(|d| self.inner.verifying.begin(&d.sha256));

        // Count while streaming, for progress events (≤ 10/s).
        let done = Arc::new(AtomicU64::new(0));
        let counted = {
            let done = done.clone();
            let uploaded = self.inner.metrics.clone();
            data.inspect(move |c| {
                if let Ok(b) = c {
                    done.fetch_add(b.len() as u64, Ordering::Relaxed);
                    uploaded
                        .bytes_uploaded
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed()
        };
        // One pass (`prepare.rs`): the store hashes and keeps the bytes, the extractor
        // inflates, checks and (when the backend takes one) prepares the tree, together.
        let (tx, rx) = mpsc::channel(prepare::TEE_DEPTH);
        let tee = Arc::new(prepare::TeeState::default());
        let expect = BlobExpect {
            descriptor: declared,
            max_bytes,
        };
        let put = self
            .inner
            .store
            .put_blob(prepare::tee(counted, tx, tee.clone()), expect);
        let checked = Arc::new(prepare::CheckProgress::default());
        let check = prepare::check(
            prepare::ChannelReader::new(rx),
            // Sizes the extractor's buffers (0: not known).
            Some(size_hint).filter(|&n| n > 0),
            ExtractPolicy::from_limits(&record.limits),
            self.prepare_at(id, &record.backend),
            checked.clone(),
        );
        let both = async { tokio::join!(put, check) };
        tokio::pin!(both);
        let mut tick = progress_ticks(self.inner.config.progress_interval);
        let (put_result, check_result) = loop {
            tokio::select! {
                r = &mut both => break r,
                _ = tick.tick() => {
                    let ev = NewEvent::now(EventKind::ArchiveProgress {
                        phase: ArchivePhase::Receiving,
                        bytes_done: done.load(Ordering::Relaxed),
                        bytes_total: size_hint,
                        entries: checked.entries.load(Ordering::Relaxed),
                    });
                    self.commit(&mut record, vec![ev], None).await?;
                }
            }
        };
        let stored = put_result.map(|info| ArchiveDescriptor {
            size_bytes: info.size_bytes,
            sha256: info.sha256,
        });
        let verifying = match (&stored, early) {
            (_, Some(guard)) => Some(guard),
            (Ok(d), None) => Some(self.inner.verifying.begin(&d.sha256)),
            (Err(_), None) => None,
        };
        let (descriptor, summary, tree) = match (stored, check_result) {
            (Ok(d), Ok((summary, tree))) => (d, summary, tree),
            // The bytes are not the declared archive (or did not arrive, or could not be
            // stored): that is the error, whatever the check made of them.
            (Err(e), check) if !tee.check_stopped() => {
                if let Ok((_, Some((tree, _slot)))) = check {
                    tree.discard().await;
                }
                self.report_rejection(&mut record, &e).await;
                return Err(e);
            }
            // The check refused (or failed): the store kept whatever arrived, if all did.
            (_, Err(e)) | (Err(e), Ok(_)) => {
                self.report_rejection(&mut record, &e).await;
                if let (Error::ArchiveRejected { .. }, Some(verifying)) = (&e, &verifying) {
                    self.discard_rejected(verifying).await;
                }
                return Err(e);
            }
        };
        if !then_start {
            return self
                .archive_ready(&mut record, &descriptor, kind, summary, tree, false)
                .await;
        }
        // The commit that starts the run and the start of its driver are one step, which a
        // caller dropped in between (an interrupted CLI) must not cut in two, leaving a run
        // in `starting` that nothing drives: a task of its own, holding the run's lock.
        let engine = self.clone();
        let step = async move {
            let _guard = guard;
            let mut record = record;
            engine
                .archive_ready(&mut record, &descriptor, kind, summary, tree, true)
                .await
        };
        tokio::spawn(step.in_current_span())
            .await
            .map_err(|e| Error::io("starting the run", std::io::Error::other(e.to_string())))?
    }

    /// Policy check of a stored archive (and its tree prepared for `start`), then
    /// `archive_ready`. A refused archive's blob is deleted (`rejected.rs`).
    async fn verify_stored(
        &self,
        record: &mut RunRecord,
        descriptor: &ArchiveDescriptor,
        kind: UploadKind,
        verifying: &VerifyingGuard,
    ) -> Result<RunRecord> {
        let reader = self.inner.store.open_blob(&descriptor.sha256).await?;
        let checked = Arc::new(prepare::CheckProgress::default());
        let check = prepare::check(
            reader,
            Some(descriptor.size_bytes),
            ExtractPolicy::from_limits(&record.limits),
            self.prepare_at(&record.id, &record.backend),
            checked.clone(),
        );
        tokio::pin!(check);
        let mut tick = progress_ticks(self.inner.config.progress_interval);
        let total = descriptor.size_bytes;
        let result = loop {
            tokio::select! {
                r = &mut check => break r,
                _ = tick.tick() => {
                    let ev = NewEvent::now(EventKind::ArchiveProgress {
                        phase: ArchivePhase::Verifying,
                        bytes_done: checked.bytes.load(Ordering::Relaxed),
                        bytes_total: total,
                        entries: checked.entries.load(Ordering::Relaxed),
                    });
                    self.commit(record, vec![ev], None).await?;
                }
            }
        };
        let (summary, tree) = match result {
            Ok(checked) => checked,
            Err(e) => {
                self.report_rejection(record, &e).await;
                if matches!(e, Error::ArchiveRejected { .. }) {
                    self.discard_rejected(verifying).await;
                }
                return Err(e);
            }
        };
        self.archive_ready(record, descriptor, kind, summary, tree, false)
            .await
    }

    /// The archive passed: `archive_verified` and `archive_ready` in one commit, the tree
    /// kept for `start`, the run's other transfers discarded. With `then_start` and a slot
    /// free now, `queued` and `starting` join that commit and the run's driver starts (the
    /// fast path of [`start`](WorkspaceRuns::start)); otherwise the run stays in
    /// `archive_ready` for the caller to start.
    async fn archive_ready(
        &self,
        record: &mut RunRecord,
        descriptor: &ArchiveDescriptor,
        kind: UploadKind,
        summary: ExtractSummary,
        tree: Option<prepare::Held>,
        then_start: bool,
    ) -> Result<RunRecord> {
        record.archive = Some(ArchiveInfo {
            size_bytes: descriptor.size_bytes,
            sha256: descriptor.sha256.clone(),
            upload: kind,
            entries: summary.entries,
            extracted_bytes: summary.bytes,
        });
        let now = Timestamp::now();
        record.timestamps.archive_verified = Some(now);
        let total = descriptor.size_bytes;
        let progress = NewEvent {
            at: now,
            kind: EventKind::ArchiveProgress {
                phase: ArchivePhase::Verifying,
                bytes_done: total,
                bytes_total: total,
                entries: summary.entries,
            },
        };
        let verified = NewEvent {
            at: now,
            kind: EventKind::ArchiveVerified {
                size_bytes: descriptor.size_bytes,
                sha256: descriptor.sha256.clone(),
                upload: kind,
            },
        };
        let mut events = vec![progress, verified];
        events.push(lifecycle::advance(record, Input::ArchiveVerified, now)?);
        let started = match then_start {
            true => self.start_now(record, &mut events, now)?,
            false => None,
        };
        // On a failed commit the tree is dropped, which removes it (and the slot is freed).
        self.commit(record, events, None).await?;
        if let Some(tree) = tree {
            self.keep_prepared(&record.id, tree);
        }
        self.discard_transfers(&record.id).await;
        if let Some((backend, permit)) = started {
            let secrets = lock(&self.inner.secrets)
                .remove(&record.id)
                .unwrap_or_default();
            self.spawn_driver(record.clone(), backend, secrets, Some(permit));
        }
        Ok(record.clone())
    }

    /// The fast path of `start` for a run in `archive_ready` (in `record`, not yet
    /// committed): when this engine holds what the run needs (its backend; its secret
    /// values, if it has secrets) and a slot is free now, `queued` and `starting` are added
    /// to `events` and the backend and the slot returned; else nothing changes.
    fn start_now(
        &self,
        record: &mut RunRecord,
        events: &mut Vec<NewEvent>,
        now: Timestamp,
    ) -> Result<
        Option<(
            Arc<dyn crate::backend::SandboxBackend>,
            OwnedSemaphorePermit,
        )>,
    > {
        let secrets_here =
            record.secret_names.is_empty() || lock(&self.inner.secrets).contains_key(&record.id);
        let Ok(backend) = self.backend(&record.backend) else {
            return Ok(None);
        };
        if !secrets_here {
            return Ok(None);
        }
        let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let backend = backend.clone();
        record.owner = Some(self.inner.owner.clone());
        events.push(lifecycle::advance(record, Input::Start, now)?);
        events.push(lifecycle::advance(record, Input::SlotAcquired, now)?);
        Ok(Some((backend, permit)))
    }

    /// A refused upload: an `error` event; the run stays in `awaiting_archive`.
    async fn report_rejection(&self, record: &mut RunRecord, e: &Error) {
        let ev = NewEvent::now(EventKind::Error {
            code: e.code().into(),
            message: e.to_string(),
        });
        if let Err(commit_err) = self.commit(record, vec![ev], None).await {
            tracing::warn!(run = %record.id, error = %commit_err.chain(), "could not record a rejected upload");
        }
    }
}

/// How an upload is taken: its size limit, its kind, and whether the run starts with it.
struct Upload {
    max_bytes: u64,
    kind: UploadKind,
    then_start: bool,
}

impl Upload {
    /// A direct upload (one stream) of at most `max_bytes`.
    fn direct(max_bytes: u64, then_start: bool) -> Self {
        Self {
            max_bytes,
            kind: UploadKind::Direct,
            then_start,
        }
    }
}

/// Progress ticks every `period`, the first one `period` from now. (Not `interval`, whose
/// first tick is due at once: awaiting it still waits for the timer wheel's next
/// millisecond, which cost every upload about a millisecond before its first byte.)
fn progress_ticks(period: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}
