//! Nothing grows without bound: refused archives are not kept, staged transfers are capped
//! per run and per engine, runs that never get an archive expire, and garbage collection
//! runs on demand and on a schedule. The engine on `MemoryStore` and the `FakeBackend`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crownest_core::engine::staging::{OPEN_TRANSFERS_PER_RUN, STAGED_BYTES_PER_ENGINE};
use crownest_core::event::{EventKind, FailureKind, verify_chain};
use crownest_core::gc::{GcPolicy, StoreGcReport};
use crownest_core::run::RunRecord;
use crownest_core::store::{
    BlobExpect, BlobInfo, BlobReader, ByteStream, CreateOutcome, RunCommit, RunQuery, Store,
    TransferRecord,
};
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz, tar_gz_raw_name};
use crownest_core::{
    ArchiveDescriptor, Artifact, ArtifactId, EngineConfig, Error, Event, EvidenceBundle,
    MemoryStore, RejectReason, Result, RunId, RunSpec, RunStatus, Sha256Digest, Timestamp,
    TransferId, WorkspaceRuns,
};

struct Env {
    engine: WorkspaceRuns,
    store: Arc<MemoryStore>,
}

async fn env_with(config: EngineConfig) -> Env {
    let store = Arc::new(MemoryStore::new());
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(FakeBackend::new()))
        .config(EngineConfig {
            subscribe_poll_interval: Duration::from_millis(20),
            ..config
        })
        .open()
        .await
        .unwrap();
    Env { engine, store }
}

async fn env() -> Env {
    env_with(EngineConfig::default()).await
}

fn spec() -> RunSpec {
    RunSpec::new(["fake", "exit:0"])
}

/// Two files and an implied directory: three entries.
fn archive() -> Bytes {
    tar_gz(&[
        ("main.py", b"print('hi')\n", 0o644),
        ("data/input.txt", b"42\n", 0o644),
    ])
}

fn declared(size_bytes: u64) -> ArchiveDescriptor {
    ArchiveDescriptor {
        size_bytes,
        sha256: Sha256Digest::of(format!("declared {size_bytes}").as_bytes()),
    }
}

fn limit_of(r: Result<impl std::fmt::Debug, Error>) -> (&'static str, u64) {
    match r {
        Err(Error::LimitExceeded { limit, max }) => (limit, max),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hostile_archive_refused_at_upload_leaves_no_blob() {
    let e = env().await;
    let run = e.engine.create(spec()).await.unwrap();
    let hostile = tar_gz_raw_name("../../etc/evil", b"x");
    let d = descriptor_of(&hostile);
    let err = e
        .engine
        .upload_archive(&run.id, &d, hostile.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::ParentTraversal,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        e.store.has_blob(&d.sha256).await.unwrap(),
        None,
        "the refused archive's blob is deleted"
    );
    assert_eq!(
        e.engine.get(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive,
        "the run may retry"
    );

    // The same through a staged transfer: neither the blob nor the transfer stays.
    let t = e.engine.begin_transfer(&run.id, &d).await.unwrap();
    e.engine
        .put_chunk(&t.transfer_id, 0, hostile.clone())
        .await
        .unwrap();
    assert!(matches!(
        e.engine.complete_transfer(&t.transfer_id).await,
        Err(Error::ArchiveRejected { .. })
    ));
    assert_eq!(e.store.has_blob(&d.sha256).await.unwrap(), None);
    assert!(e.store.list_transfers(None).await.unwrap().is_empty());

    // And a retry with good bytes still works.
    let a = archive();
    let ready = e
        .engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
}

#[tokio::test]
async fn a_refused_archive_is_kept_while_another_run_names_it() {
    let e = env().await;
    let a = archive();
    let d = descriptor_of(&a);
    let accepted = e.engine.create(spec()).await.unwrap();
    e.engine
        .upload_archive(&accepted.id, &d, a.clone())
        .await
        .unwrap();

    // A run whose limits refuse the very same bytes (3 entries > 1).
    let mut strict = spec();
    strict.limits.entries = Some(1);
    let refused = e.engine.create(strict).await.unwrap();
    let err = e
        .engine
        .upload_archive(&refused.id, &d, a.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::TooManyEntries,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        e.store.has_blob(&d.sha256).await.unwrap(),
        Some(a.len() as u64),
        "another run names the blob: it is kept"
    );
    // Attaching it by digest to a strict run is refused too, and still keeps it.
    assert!(matches!(
        e.engine.attach_archive(&refused.id, &d).await,
        Err(Error::ArchiveRejected { .. })
    ));
    assert!(e.store.has_blob(&d.sha256).await.unwrap().is_some());
    // The run that accepted it still runs from it.
    e.engine.start(&accepted.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), e.engine.wait(&accepted.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_fifth_open_transfer_of_a_run_is_refused() {
    let e = env().await;
    let run = e.engine.create(spec()).await.unwrap();
    let mut open = Vec::new();
    for i in 0..4 {
        open.push(
            e.engine
                .begin_transfer(&run.id, &declared(1000 + i))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        limit_of(e.engine.begin_transfer(&run.id, &declared(2000)).await),
        (OPEN_TRANSFERS_PER_RUN, 4)
    );
    assert_eq!(
        e.store.list_transfers(Some(&run.id)).await.unwrap().len(),
        4
    );
    // Another run is not affected by this run's transfers.
    let other = e.engine.create(spec()).await.unwrap();
    e.engine
        .begin_transfer(&other.id, &declared(1))
        .await
        .unwrap();
    // A transfer that ends (here: a digest mismatch discards it) frees a place.
    let bytes = Bytes::from(vec![0u8; 1000]);
    e.engine
        .put_chunk(&open[0].transfer_id, 0, bytes)
        .await
        .unwrap();
    assert!(matches!(
        e.engine.complete_transfer(&open[0].transfer_id).await,
        Err(Error::ArchiveRejected { .. })
    ));
    e.engine
        .begin_transfer(&run.id, &declared(2000))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_cap_on_open_transfers_per_run_is_configurable() {
    let e = env_with(EngineConfig {
        max_open_transfers_per_run: 1,
        ..EngineConfig::default()
    })
    .await;
    let run = e.engine.create(spec()).await.unwrap();
    e.engine
        .begin_transfer(&run.id, &declared(1))
        .await
        .unwrap();
    assert_eq!(
        limit_of(e.engine.begin_transfer(&run.id, &declared(1)).await),
        (OPEN_TRANSFERS_PER_RUN, 1)
    );
}

#[tokio::test]
async fn the_engine_caps_the_declared_bytes_of_all_open_transfers() {
    let e = env_with(EngineConfig {
        max_staged_bytes: 1000,
        ..EngineConfig::default()
    })
    .await;
    let a = e.engine.create(spec()).await.unwrap();
    let b = e.engine.create(spec()).await.unwrap();
    e.engine
        .begin_transfer(&a.id, &declared(600))
        .await
        .unwrap();
    assert_eq!(
        limit_of(e.engine.begin_transfer(&b.id, &declared(401)).await),
        (STAGED_BYTES_PER_ENGINE, 1000),
        "declared sizes count, across runs, before any byte arrived"
    );
    e.engine
        .begin_transfer(&b.id, &declared(400))
        .await
        .unwrap();
    assert_eq!(
        limit_of(e.engine.begin_transfer(&b.id, &declared(1)).await),
        (STAGED_BYTES_PER_ENGINE, 1000)
    );
    // Canceling run a discards its transfer, which frees its 600 bytes.
    e.engine.cancel(&a.id).await.unwrap();
    assert!(
        e.store
            .list_transfers(Some(&a.id))
            .await
            .unwrap()
            .is_empty()
    );
    e.engine
        .begin_transfer(&b.id, &declared(600))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfer_requests_never_pass_the_caps() {
    let e = env_with(EngineConfig {
        max_staged_bytes: 10_000,
        ..EngineConfig::default()
    })
    .await;
    let run = e.engine.create(spec()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let engine = e.engine.clone();
        let id = run.id.clone();
        tasks.push(tokio::spawn(async move {
            engine.begin_transfer(&id, &declared(100 + i)).await.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 4);
    assert_eq!(e.store.list_transfers(None).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_verified_archive_discards_the_runs_other_transfers() {
    let e = env().await;
    let run = e.engine.create(spec()).await.unwrap();
    e.engine
        .begin_transfer(&run.id, &declared(10))
        .await
        .unwrap();
    e.engine
        .begin_transfer(&run.id, &declared(20))
        .await
        .unwrap();
    let a = archive();
    e.engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    assert!(
        e.store.list_transfers(None).await.unwrap().is_empty(),
        "a run in archive_ready keeps no transfer"
    );
}

#[tokio::test]
async fn an_awaiting_archive_run_past_its_ttl_ends_canceled_with_evidence() {
    let e = env_with(EngineConfig {
        awaiting_archive_ttl: Duration::from_millis(200),
        ..EngineConfig::default()
    })
    .await;
    let stale = e.engine.create(spec()).await.unwrap();
    e.engine
        .begin_transfer(&stale.id, &declared(100))
        .await
        .unwrap();
    let ready = e.engine.create(spec()).await.unwrap();
    let a = archive();
    e.engine
        .upload_archive(&ready.id, &descriptor_of(&a), a.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let fresh = e.engine.create(spec()).await.unwrap();

    let report = e.engine.collect_garbage().await.unwrap();
    assert_eq!(report.expired_runs, vec![stale.id.clone()], "{report:?}");

    let ended = e.engine.get(&stale.id).await.unwrap();
    assert_eq!(ended.status, RunStatus::Canceled);
    let failure = ended.failure.clone().unwrap();
    assert_eq!(failure.kind, FailureKind::LimitExceeded);
    assert!(
        failure.message.contains("awaiting_archive TTL expired"),
        "{}",
        failure.message
    );
    // Ended through the one terminal commit: status + terminal events, then evidence.
    let events = e.engine.list_events(&stale.id, 0, 100).await.unwrap();
    verify_chain(&stale.id, &events).unwrap();
    let last = events.last().unwrap();
    match &last.kind {
        EventKind::Terminal {
            status, failure: f, ..
        } => {
            assert_eq!(*status, RunStatus::Canceled);
            assert_eq!(f.as_ref(), Some(&failure));
        }
        other => panic!("last event is {other:?}"),
    }
    assert!(events.iter().any(|ev| matches!(
        ev.kind,
        EventKind::Status {
            status: RunStatus::Canceled,
            previous: Some(RunStatus::AwaitingArchive)
        }
    )));
    let evidence = e.engine.evidence(&stale.id).await.unwrap();
    assert_eq!(evidence.status, RunStatus::Canceled);
    assert_eq!(evidence.failure.as_ref(), Some(&failure));
    assert_eq!(evidence.terminal_event, *last);
    // Its transfer is gone; it takes no archive any more.
    assert!(e.store.list_transfers(None).await.unwrap().is_empty());
    assert!(matches!(
        e.engine
            .upload_archive(&stale.id, &descriptor_of(&a), a)
            .await,
        Err(Error::InvalidTransition { .. })
    ));
    // A run that got its archive, and a fresh one, are untouched.
    assert_eq!(
        e.engine.get(&ready.id).await.unwrap().status,
        RunStatus::ArchiveReady
    );
    assert_eq!(
        e.engine.get(&fresh.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    // A second pass has nothing more to expire.
    assert!(
        e.engine
            .collect_garbage()
            .await
            .unwrap()
            .expired_runs
            .is_empty()
    );
}

#[tokio::test]
async fn gc_discards_transfers_a_run_can_no_longer_use() {
    let e = env().await;
    let run = e.engine.create(spec()).await.unwrap();
    e.engine.cancel(&run.id).await.unwrap();
    // As a crash between the cancel and the discard would leave it.
    let stray = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: declared(10),
        chunk_size_bytes: 10,
        received: Default::default(),
        created_at: Timestamp::now(),
    };
    e.store.create_transfer(&stray).await.unwrap();
    let orphan = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: RunId::new(),
        ..stray.clone()
    };
    e.store.create_transfer(&orphan).await.unwrap();
    let waiting = e.engine.create(spec()).await.unwrap();
    let kept = e
        .engine
        .begin_transfer(&waiting.id, &declared(10))
        .await
        .unwrap();

    let report = e.engine.collect_garbage().await.unwrap();
    assert_eq!(report.transfers_discarded, 2, "{report:?}");
    let left: Vec<TransferId> = e
        .store
        .list_transfers(None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.transfer_id)
        .collect();
    assert_eq!(left, vec![kept.transfer_id]);
}

#[tokio::test]
async fn periodic_gc_expires_runs_without_being_asked() {
    let e = env_with(EngineConfig {
        awaiting_archive_ttl: Duration::from_millis(100),
        ..EngineConfig::default()
    })
    .await;
    let passes = Arc::new(AtomicUsize::new(0));
    let expired = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let (passes, expired) = (passes.clone(), expired.clone());
        e.engine
            .spawn_periodic_gc(Duration::from_millis(30), move |r| {
                passes.fetch_add(1, Ordering::SeqCst);
                expired.lock().unwrap().extend(r.unwrap().expired_runs);
            })
    };
    let run = e.engine.create(spec()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), e.engine.wait(&run.id))
        .await
        .expect("the periodic gc expires the run")
        .unwrap();
    assert_eq!(done.status, RunStatus::Canceled);
    assert!(e.engine.evidence(&run.id).await.is_ok());
    assert_eq!(*expired.lock().unwrap(), vec![run.id.clone()]);
    assert!(passes.load(Ordering::SeqCst) >= 2, "it ran more than once");
    // Stopping it stops the passes.
    task.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = passes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(passes.load(Ordering::SeqCst), after);
}

/// A `MemoryStore` whose first `open_blob` waits, so a test can hold one upload between
/// "bytes stored" and "verified" while another upload of the same bytes is refused.
#[derive(Debug)]
struct SlowFirstOpen {
    inner: MemoryStore,
    delayed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for SlowFirstOpen {
    async fn create_run(&self, run: RunRecord) -> Result<CreateOutcome> {
        self.inner.create_run(run).await
    }
    async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        self.inner.list_runs(query).await
    }
    async fn list_unfinished(&self) -> Result<Vec<RunRecord>> {
        self.inner.list_unfinished().await
    }
    async fn commit(&self, id: &RunId, commit: RunCommit) -> Result<Vec<Event>> {
        self.inner.commit(id, commit).await
    }
    async fn request_cancel(&self, id: &RunId) -> Result<RunRecord> {
        self.inner.request_cancel(id).await
    }
    async fn list_events(&self, id: &RunId, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.list_events(id, after_seq, limit).await
    }
    async fn put_blob(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<BlobInfo> {
        self.inner.put_blob(data, expect).await
    }
    async fn has_blob(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        self.inner.has_blob(sha256).await
    }
    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        if !self.delayed.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.inner.open_blob(sha256).await
    }
    async fn discard_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        self.inner.discard_blob(sha256).await
    }
    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<()> {
        self.inner.create_transfer(transfer).await
    }
    async fn get_transfer(&self, id: &TransferId) -> Result<TransferRecord> {
        self.inner.get_transfer(id).await
    }
    async fn put_chunk(&self, id: &TransferId, index: u64, data: Bytes) -> Result<TransferRecord> {
        self.inner.put_chunk(id, index, data).await
    }
    async fn open_transfer(&self, id: &TransferId) -> Result<BlobReader> {
        self.inner.open_transfer(id).await
    }
    async fn delete_transfer(&self, id: &TransferId) -> Result<()> {
        self.inner.delete_transfer(id).await
    }
    async fn list_transfers(&self, run: Option<&RunId>) -> Result<Vec<TransferRecord>> {
        self.inner.list_transfers(run).await
    }
    async fn collect_garbage(&self, policy: &GcPolicy) -> Result<StoreGcReport> {
        self.inner.collect_garbage(policy).await
    }
    async fn get_evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        self.inner.get_evidence(id).await
    }
    async fn delete_run(&self, id: &RunId) -> Result<()> {
        self.inner.delete_run(id).await
    }
    async fn usage(&self) -> Result<crownest_core::store::StoreUsage> {
        self.inner.usage().await
    }
    async fn get_evidence_envelope(
        &self,
        id: &RunId,
    ) -> Result<Option<crownest_core::signing::DsseEnvelope>> {
        self.inner.get_evidence_envelope(id).await
    }
    async fn get_artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.inner.get_artifact(id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_keeps_the_bytes_another_upload_is_still_verifying() {
    let store = Arc::new(SlowFirstOpen {
        inner: MemoryStore::new(),
        delayed: Default::default(),
    });
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(FakeBackend::new()))
        .open()
        .await
        .unwrap();
    let a = archive();
    let d = descriptor_of(&a);
    let loose = engine.create(spec()).await.unwrap();
    let mut strict = spec();
    strict.limits.entries = Some(1);
    let strict = engine.create(strict).await.unwrap();

    // The loose run's upload stores the bytes, then waits before verifying them...
    let verifying = {
        let (engine, id, d, a) = (engine.clone(), loose.id.clone(), d.clone(), a.clone());
        tokio::spawn(async move { engine.upload_archive(&id, &d, a).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while the strict run's upload of the same bytes is refused.
    assert!(matches!(
        engine.upload_archive(&strict.id, &d, a).await,
        Err(Error::ArchiveRejected { .. })
    ));
    let ready = verifying.await.unwrap().unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert!(
        store.has_blob(&d.sha256).await.unwrap().is_some(),
        "the refusal did not delete the bytes the other run now names"
    );
}
