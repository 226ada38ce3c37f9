//! The engine's resource bounds on a `SqliteStore`: a refused archive's blob file is gone
//! from disk (kept while another run names it), the transfer caps count what the store
//! holds (also after a restart), and an expired run's evidence is durable.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crownest_core::event::FailureKind;
use crownest_core::store::Store;
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz, tar_gz_raw_name};
use crownest_core::{
    ArchiveDescriptor, EngineConfig, Error, RunSpec, RunStatus, Sha256Digest, WorkspaceRuns,
};
use crownest_store_sqlite::SqliteStore;

async fn engine_on(store: &SqliteStore, config: EngineConfig) -> WorkspaceRuns {
    WorkspaceRuns::builder(Arc::new(store.clone()))
        .backend(Arc::new(FakeBackend::new()))
        .config(config)
        .open()
        .await
        .unwrap()
}

fn spec() -> RunSpec {
    RunSpec::new(["fake", "exit:0"])
}

fn blob_file(dir: &Path, sha: &Sha256Digest) -> PathBuf {
    let s = sha.as_str();
    dir.join("blobs").join(&s[..2]).join(&s[2..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_archive_leaves_no_blob_file_unless_a_run_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = engine_on(&store, EngineConfig::default()).await;

    let hostile = tar_gz_raw_name("../../etc/evil", b"x");
    let d = descriptor_of(&hostile);
    let run = engine.create(spec()).await.unwrap();
    assert!(matches!(
        engine.upload_archive(&run.id, &d, hostile).await,
        Err(Error::ArchiveRejected { .. })
    ));
    assert_eq!(store.has_blob(&d.sha256).await.unwrap(), None);
    assert!(!blob_file(dir.path(), &d.sha256).exists(), "file deleted");

    // Three entries: fine for one run, too many for a run limited to one.
    let a = tar_gz(&[("a.txt", b"a", 0o644), ("dir/b.txt", b"b", 0o644)]);
    let d = descriptor_of(&a);
    let accepted = engine.create(spec()).await.unwrap();
    engine
        .upload_archive(&accepted.id, &d, a.clone())
        .await
        .unwrap();
    let mut strict = spec();
    strict.limits.entries = Some(1);
    let refused = engine.create(strict).await.unwrap();
    assert!(matches!(
        engine.upload_archive(&refused.id, &d, a).await,
        Err(Error::ArchiveRejected { .. })
    ));
    assert!(store.has_blob(&d.sha256).await.unwrap().is_some());
    assert!(
        blob_file(dir.path(), &d.sha256).exists(),
        "named by another run: kept"
    );
}

fn declared(size_bytes: u64) -> ArchiveDescriptor {
    ArchiveDescriptor {
        size_bytes,
        sha256: Sha256Digest::of(size_bytes.to_string().as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_caps_count_what_the_store_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        max_staged_bytes: 10_000,
        ..EngineConfig::default()
    };
    let (a, b) = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let engine = engine_on(&store, config.clone()).await;
        let a = engine.create(spec()).await.unwrap();
        for size in 1..=4 {
            engine.begin_transfer(&a.id, &declared(size)).await.unwrap();
        }
        assert!(matches!(
            engine.begin_transfer(&a.id, &declared(5)).await,
            Err(Error::LimitExceeded {
                limit: "openTransfersPerRun",
                max: 4
            })
        ));
        let b = engine.create(spec()).await.unwrap();
        engine.begin_transfer(&b.id, &declared(9000)).await.unwrap();
        store.close().await;
        (a, b)
    };
    // A second engine on the reopened store counts the same open transfers (its recovery
    // leaves the runs alone: their owner, this process, is alive).
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = engine_on(&store, config).await;
    assert_eq!(
        engine.get(&a.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    assert!(matches!(
        engine.begin_transfer(&a.id, &declared(6)).await,
        Err(Error::LimitExceeded {
            limit: "openTransfersPerRun",
            ..
        })
    ));
    assert!(matches!(
        engine.begin_transfer(&b.id, &declared(1000)).await,
        Err(Error::LimitExceeded {
            limit: "stagedBytesPerEngine",
            max: 10_000
        })
    ));
    engine.begin_transfer(&b.id, &declared(990)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_runs_evidence_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let engine = engine_on(
            &store,
            EngineConfig {
                awaiting_archive_ttl: Duration::from_millis(100),
                ..EngineConfig::default()
            },
        )
        .await;
        let run = engine.create(spec()).await.unwrap();
        engine.begin_transfer(&run.id, &declared(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let report = engine.collect_garbage().await.unwrap();
        assert_eq!(report.expired_runs, vec![run.id.clone()]);
        assert!(store.list_transfers(None).await.unwrap().is_empty());
        store.close().await;
        run.id
    };
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.get_run(&id).await.unwrap();
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(
        run.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::LimitExceeded)
    );
    let evidence = store.get_evidence(&id).await.unwrap();
    assert_eq!(evidence.status, RunStatus::Canceled);
    assert_eq!(evidence.failure, run.failure);
}
