//! The engine on a `PostgresStore` with the process backend: whole runs of real commands
//! through `WorkspaceRuns`, read back by another store instance (another process or host),
//! a staged upload whose chunks go through two engines, a cancel from another instance,
//! and recovery of a run whose owner crashed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use crownest_core::event::{EventKind, FailureKind, verify_chain};
use crownest_core::store::{RunCommit, Store};
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{EngineConfig, RunRecord, RunSpec, RunStatus, WorkspaceRuns};
use futures::StreamExt as _;

fn fast() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(200),
        cancel_poll_interval: Duration::from_millis(20),
        subscribe_poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    }
}

fn archive() -> Bytes {
    tar_gz(&[
        (
            "main.sh",
            b"echo hello from the workspace\nmkdir -p out\nprintf done > out/result.txt\n",
            0o644,
        ),
        ("data.txt", b"the archive's data\n", 0o644),
    ])
}

async fn wait(engine: &WorkspaceRuns, run: &RunRecord) -> RunRecord {
    tokio::time::timeout(Duration::from_secs(120), engine.wait(&run.id))
        .await
        .expect("the run ended")
        .unwrap()
}

fn stdout_of(events: &[crownest_core::Event]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .flat_map(|e| match &e.kind {
            EventKind::Stdout(c) => c.bytes(),
            _ => Vec::new(),
        })
        .collect();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_end_to_end_is_read_back_by_another_instance() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let engine = engine_on(t.store.clone(), work.path(), fast()).await;
    let a = archive();
    let run = engine
        .create(RunSpec::new(["sh", "main.sh"]).with_artifact("out/result.txt", true))
        .await
        .unwrap();
    engine
        .upload_archive(&run.id, &descriptor_of(&a), a.clone())
        .await
        .unwrap();
    let mut live = engine.subscribe(&run.id, 0);
    engine.start(&run.id).await.unwrap();
    let done = wait(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let mut followed = Vec::new();
    while let Some(e) = live.next().await {
        followed.push(e.unwrap());
    }
    let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(followed, events, "subscribe saw exactly the stored log");
    assert_eq!(stdout_of(&events), "hello from the workspace\n");
    let evidence = engine.evidence(&run.id).await.unwrap();
    evidence.verify_events(&events).unwrap();
    assert_eq!(evidence.artifacts.len(), 1);

    // Another process (or host) on the same database and blob directory reads it all back.
    let other = t.reopen().await;
    assert_eq!(other.get_run(&run.id).await.unwrap(), done);
    assert_eq!(other.list_events(&run.id, 0, 1000).await.unwrap(), events);
    assert_eq!(other.get_evidence(&run.id).await.unwrap(), evidence);
    verify_chain(&run.id, &events).unwrap();
    let artifact = &done.artifacts[0];
    assert_eq!(
        other.get_artifact(&artifact.artifact_id).await.unwrap(),
        *artifact
    );
    assert_eq!(
        read_all(other.open_blob(&artifact.sha256).await.unwrap()),
        b"done"
    );
    assert_eq!(
        other.has_blob(&descriptor_of(&a).sha256).await.unwrap(),
        Some(a.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_upload_whose_chunks_go_through_two_engines() {
    staged_upload_through_two_engines(Blobs::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_upload_whose_chunks_go_through_two_engines_on_an_object_store() {
    staged_upload_through_two_engines(Blobs::FileUrl).await;
}

async fn staged_upload_through_two_engines(blobs: Blobs) {
    let Some(t) = TempStore::open_with(blobs).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        chunk_size_bytes: 100,
        ..fast()
    };
    // Two engines, each with its own store instance (pool) on the one database and the one
    // blob directory or bucket URL.
    let a = engine_on(t.store.clone(), &work.path().join("a"), config()).await;
    let b = engine_on(t.reopen().await, &work.path().join("b"), config()).await;
    let bytes = archive();
    let run = a.create(RunSpec::new(["cat", "data.txt"])).await.unwrap();
    let transfer = a
        .begin_transfer(&run.id, &descriptor_of(&bytes))
        .await
        .unwrap();
    let chunks: Vec<_> = bytes.chunks(100).enumerate().collect();
    assert!(chunks.len() >= 2, "the archive takes several chunks");
    for (i, c) in chunks.iter().rev() {
        let engine = if i % 2 == 0 { &a } else { &b };
        engine
            .put_chunk(
                &transfer.transfer_id,
                (*i as u64) * 100,
                Bytes::copy_from_slice(c),
            )
            .await
            .unwrap();
    }
    let ready = b.complete_transfer(&transfer.transfer_id).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert!(
        t.get_transfer(&transfer.transfer_id).await.is_err(),
        "the transfer is gone once attached"
    );
    b.start(&run.id).await.unwrap();
    let done = wait(&b, &run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let events = a.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(
        stdout_of(&events),
        "the archive's data\n",
        "the command read the archive that came in chunks through both engines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_instance_stops_the_run() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let engine = engine_on(t.store.clone(), work.path(), fast()).await;
    let a = archive();
    let run = engine
        .create(RunSpec::new(["sh", "-c", "echo started; exec sleep 600"]))
        .await
        .unwrap();
    engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    let mut live = engine.subscribe(&run.id, 0);
    engine.start(&run.id).await.unwrap();
    // Wait until the command has printed: it is running.
    while let Some(e) = live.next().await {
        if matches!(&e.unwrap().kind, EventKind::Stdout(_)) {
            break;
        }
    }

    // `crownest cancel` on another host: its own store instance on the same database.
    let other = t.reopen().await;
    assert!(
        other
            .request_cancel(&run.id)
            .await
            .unwrap()
            .cancel_requested
    );

    let done = wait(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Canceled);
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
            .any(|e| matches!(e.kind, EventKind::Kill { .. })),
        "the kill ladder ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_crash_fails_the_orphaned_run() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let id = {
        let engine = engine_on(t.reopen().await, work.path(), fast()).await;
        let run = engine.create(RunSpec::new(["sleep", "600"])).await.unwrap();
        let a = archive();
        engine
            .upload_archive(&run.id, &descriptor_of(&a), a)
            .await
            .unwrap();
        // Make the record look owned by a process that is gone (as after a crash).
        let mut record = t.get_run(&run.id).await.unwrap();
        record.owner = Some(crownest_core::run::RunOwner {
            instance: "crashed".into(),
            pid: 4_194_305,
            pid_start: Some(1),
        });
        t.commit(
            &run.id,
            RunCommit {
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
    let engine = engine_on(t.store.clone(), work.path(), fast()).await; // recovery runs on open
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
    assert!(t.list_unfinished().await.unwrap().is_empty());
}
