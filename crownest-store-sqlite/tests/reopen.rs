//! Durability: everything a call acknowledged is there after the store is dropped and
//! reopened (runs, events, blobs, evidence, artifacts, transfers, the cancel flag).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use crownest_core::event::verify_chain;
use crownest_core::run::{ArchiveInfo, ArtifactKind, UploadKind};
use crownest_core::store::{RunCommit, RunQuery, Store, TransferRecord};
use crownest_core::{
    ArchiveDescriptor, Artifact, ArtifactId, RunStatus, Sha256Digest, Timestamp, TransferId,
};
use crownest_store_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let archive = b"archive bytes".repeat(5000);
    let artifact_bytes = b"artifact bytes".to_vec();
    let chunked: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();

    let (finished, open, artifact, transfer, evidence) = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        // A finished run with an archive, output, an artifact and evidence.
        let run = store.create_run(new_run()).await.unwrap().into_run();
        let a = store
            .put_blob(stream_of(&archive), any_blob())
            .await
            .unwrap();
        let mut record = run.clone();
        record.status = RunStatus::ArchiveReady;
        record.archive = Some(ArchiveInfo {
            size_bytes: a.size_bytes,
            sha256: a.sha256.clone(),
            upload: UploadKind::Direct,
            entries: 1,
            extracted_bytes: 1,
        });
        store
            .commit(
                &run.id,
                RunCommit {
                    expected_next_seq: 1,
                    events: vec![out("one"), out("two")],
                    record: Some(record.clone()),
                    evidence: None,
                    envelope: None,
                },
            )
            .await
            .unwrap();
        let b = store
            .put_blob(stream_of(&artifact_bytes), any_blob())
            .await
            .unwrap();
        let artifact = Artifact {
            artifact_id: ArtifactId::new(),
            run_id: run.id.clone(),
            path: "out.txt".into(),
            kind: ArtifactKind::File,
            size_bytes: b.size_bytes,
            sha256: b.sha256,
            mode: 0o644,
            skipped: Vec::new(),
        };
        let mut stored = store.get_run(&run.id).await.unwrap();
        stored.artifacts.push(artifact.clone());
        let terminal = terminal_commit(&stored);
        let evidence = terminal.evidence.clone().unwrap();
        store.commit(&run.id, terminal).await.unwrap();
        let finished = store.get_run(&run.id).await.unwrap();

        // An unfinished run with the cancel flag.
        let open = store.create_run(new_run()).await.unwrap().into_run();
        let open = store.request_cancel(&open.id).await.unwrap();

        // A half-done transfer.
        let transfer = TransferRecord {
            transfer_id: TransferId::new(),
            run_id: open.id.clone(),
            descriptor: ArchiveDescriptor {
                size_bytes: chunked.len() as u64,
                sha256: Sha256Digest::of(&chunked),
            },
            chunk_size_bytes: 1000,
            received: BTreeSet::new(),
            created_at: Timestamp::now(),
        };
        store.create_transfer(&transfer).await.unwrap();
        store
            .put_chunk(
                &transfer.transfer_id,
                2,
                Bytes::copy_from_slice(&chunked[2000..]),
            )
            .await
            .unwrap();
        store
            .put_chunk(
                &transfer.transfer_id,
                0,
                Bytes::copy_from_slice(&chunked[..1000]),
            )
            .await
            .unwrap();
        (finished, open, artifact, transfer, evidence)
        // `store` dropped here without `close`.
    };

    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(store.get_run(&finished.id).await.unwrap(), finished);
    assert_eq!(store.get_run(&open.id).await.unwrap(), open);
    assert!(store.get_run(&open.id).await.unwrap().cancel_requested);
    let all = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![open.id.clone(), finished.id.clone()]
    );
    assert_eq!(store.list_unfinished().await.unwrap(), vec![open.clone()]);

    let events = store.list_events(&finished.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        verify_chain(&finished.id, &events).unwrap().chain_head,
        finished.chain_head
    );
    assert_eq!(store.get_evidence(&finished.id).await.unwrap(), evidence);
    evidence.verify_events(&events).unwrap();
    assert_eq!(
        store.get_artifact(&artifact.artifact_id).await.unwrap(),
        artifact
    );

    let archive_sha = Sha256Digest::of(&archive);
    assert_eq!(
        store.has_blob(&archive_sha).await.unwrap(),
        Some(archive.len() as u64)
    );
    assert_eq!(
        read_all(store.open_blob(&archive_sha).await.unwrap()),
        archive
    );
    assert_eq!(
        read_all(store.open_blob(&artifact.sha256).await.unwrap()),
        artifact_bytes
    );

    let t = store.get_transfer(&transfer.transfer_id).await.unwrap();
    assert_eq!(
        t.received,
        BTreeSet::from([0, 2]),
        "received chunks survive"
    );
    let t = store
        .put_chunk(
            &transfer.transfer_id,
            1,
            Bytes::copy_from_slice(&chunked[1000..2000]),
        )
        .await
        .unwrap();
    assert!(t.is_complete(), "the transfer resumes after reopening");
    assert_eq!(
        read_all(store.open_transfer(&transfer.transfer_id).await.unwrap()),
        chunked
    );

    // The log goes on from the stored chain head.
    let sealed = store
        .commit(&open.id, events_commit(1, vec![out("after reopen")]))
        .await
        .unwrap();
    assert_eq!(sealed[0].seq, 1);
    assert!(
        store.get_run(&open.id).await.unwrap().cancel_requested,
        "commit keeps the flag"
    );
}

#[tokio::test]
async fn close_then_writes_fail_and_reads_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store.close().await;
    let err = store.create_run(new_run()).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    assert_eq!(store.get_run(&run.id).await.unwrap(), run);
    // What was acknowledged before close is in the database file for any other reader.
    let conn = rusqlite::Connection::open(dir.path().join("crownest.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
