//! The engine on a `SqliteStore`: whole runs through `WorkspaceRuns` (with the scripted
//! `FakeBackend`), what survives a restart, and a cancel from another process.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::event::{EventKind, FailureKind, verify_chain};
use crownest_core::store::Store;
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz};
use crownest_core::{EngineConfig, RunSpec, RunStatus, WorkspaceRuns};
use crownest_store_sqlite::SqliteStore;
use futures::StreamExt as _;

fn fast() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(50),
        cancel_poll_interval: Duration::from_millis(20),
        subscribe_poll_interval: Duration::from_millis(20),
        kill_confirm_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    }
}

async fn engine_on(store: &SqliteStore, config: EngineConfig) -> WorkspaceRuns {
    WorkspaceRuns::builder(Arc::new(store.clone()))
        .backend(Arc::new(FakeBackend::new()))
        .config(config)
        .open()
        .await
        .unwrap()
}

fn archive() -> Bytes {
    tar_gz(&[("main.py", b"print('hi')\n", 0o644)])
}

fn fake(steps: &[&str]) -> RunSpec {
    let mut argv = vec!["fake".to_owned()];
    argv.extend(steps.iter().map(|s| (*s).to_owned()));
    RunSpec::new(argv).with_backend("fake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_end_to_end_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive();
    let (id, events, evidence) = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let engine = engine_on(&store, fast()).await;
        let run = engine
            .create(
                fake(&[
                    "out:hello",
                    "outbytes:300000",
                    "write:out.txt=done",
                    "exit:0",
                ])
                .with_artifact("out.txt", true),
            )
            .await
            .unwrap();
        engine
            .upload_archive(&run.id, &descriptor_of(&a), a.clone())
            .await
            .unwrap();
        let mut live = engine.subscribe(&run.id, 0);
        engine.start(&run.id).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&run.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
        let mut followed = Vec::new();
        while let Some(e) = live.next().await {
            followed.push(e.unwrap());
        }
        let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
        assert_eq!(followed, events, "subscribe saw exactly the stored log");
        let stdout: usize = events
            .iter()
            .map(|e| match &e.kind {
                EventKind::Stdout(c) => c.bytes().len(),
                _ => 0,
            })
            .sum();
        assert_eq!(stdout, 6 + 300_000);
        let evidence = engine.evidence(&run.id).await.unwrap();
        evidence.verify_events(&events).unwrap();
        (run.id, events, evidence)
    };

    // A new process: everything is read back from disk, artifact bytes included.
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = engine_on(&store, fast()).await;
    let run = engine.get(&id).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(engine.list_events(&id, 0, 1000).await.unwrap(), events);
    assert_eq!(engine.evidence(&id).await.unwrap(), evidence);
    verify_chain(&id, &events).unwrap();
    let artifact = &run.artifacts[0];
    assert_eq!(
        store.get_artifact(&artifact.artifact_id).await.unwrap(),
        *artifact
    );
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_blob(&artifact.sha256).await.unwrap(),
        &mut bytes,
    )
    .unwrap();
    assert_eq!(bytes, b"done");
    assert_eq!(
        store.has_blob(&descriptor_of(&a).sha256).await.unwrap(),
        Some(a.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_upload_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = WorkspaceRuns::builder(Arc::new(store.clone()))
        .backend(Arc::new(FakeBackend::new()))
        .config(EngineConfig {
            chunk_size_bytes: 100,
            ..fast()
        })
        .open()
        .await
        .unwrap();
    let a = archive();
    let run = engine.create(fake(&["cat:main.py"])).await.unwrap();
    let t = engine
        .begin_transfer(&run.id, &descriptor_of(&a))
        .await
        .unwrap();
    let chunks: Vec<_> = a.chunks(100).enumerate().collect();
    for (i, c) in chunks.iter().rev() {
        engine
            .put_chunk(&t.transfer_id, (*i as u64) * 100, Bytes::copy_from_slice(c))
            .await
            .unwrap();
    }
    let ready = engine.complete_transfer(&t.transfer_id).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert!(
        store.get_transfer(&t.transfer_id).await.is_err(),
        "the transfer is gone once attached"
    );
    assert!(
        !dir.path()
            .join("transfers")
            .join(t.transfer_id.as_str())
            .exists(),
        "and its chunk files"
    );
    engine.start(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&run.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    let out: Vec<u8> = engine
        .list_events(&run.id, 0, 1000)
        .await
        .unwrap()
        .iter()
        .flat_map(|e| match &e.kind {
            EventKind::Stdout(c) => c.bytes(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        out, b"print('hi')\n",
        "the command read the archive that came in chunks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let runner_store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = engine_on(&runner_store, fast()).await;
    let a = archive();
    let run = engine.create(fake(&["out:started", "hang"])).await.unwrap();
    engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    for _ in 0..500 {
        if engine.get(&run.id).await.unwrap().status == RunStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // `crownest cancel` in another terminal: its own store instance on the same directory.
    let other = SqliteStore::open(dir.path()).await.unwrap();
    assert!(
        other
            .request_cancel(&run.id)
            .await
            .unwrap()
            .cancel_requested
    );

    let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&run.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Canceled);
    // The other process reads the outcome and the evidence.
    let events = other.list_events(&run.id, 0, 1000).await.unwrap();
    other
        .get_evidence(&run.id)
        .await
        .unwrap()
        .verify_events(&events)
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Kill { .. }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_crash_fails_the_orphaned_run() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let engine = engine_on(&store, fast()).await;
        let run = engine.create(fake(&["hang"])).await.unwrap();
        let a = archive();
        engine
            .upload_archive(&run.id, &descriptor_of(&a), a)
            .await
            .unwrap();
        // Make the record look owned by a process that is gone (as after a crash).
        let mut record = store.get_run(&run.id).await.unwrap();
        record.owner = Some(crownest_core::run::RunOwner {
            instance: "crashed".into(),
            pid: 4_194_305,
            pid_start: Some(1),
        });
        store
            .commit(
                &run.id,
                crownest_core::store::RunCommit {
                    expected_next_seq: record.next_seq,
                    events: vec![],
                    record: Some(record),
                    evidence: None,
                    envelope: None,
                },
            )
            .await
            .unwrap();
        run.id
    };
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = engine_on(&store, fast()).await; // recovery runs on open
    let run = engine.get(&id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::HostRestarted)
    );
    let events = engine.list_events(&id, 0, 1000).await.unwrap();
    engine
        .evidence(&id)
        .await
        .unwrap()
        .verify_events(&events)
        .unwrap();
    assert!(store.list_unfinished().await.unwrap().is_empty());
}
