//! Garbage collection.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use crownest_core::run::{ArchiveInfo, ArtifactKind, UploadKind};
use crownest_core::store::{RunCommit, Store, TransferRecord};
use crownest_core::{ArchiveDescriptor, Artifact, ArtifactId, Sha256Digest, Timestamp, TransferId};
use crownest_store_sqlite::{GcPolicy, SqliteStore};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_unreferenced_blobs_abandoned_transfers_and_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();

    // archive: referenced as a run's archive; artifact: referenced by an artifact;
    // loose: referenced by nothing.
    let archive = store
        .put_blob(stream_of(b"the archive"), any_blob())
        .await
        .unwrap();
    let artifact_blob = store
        .put_blob(stream_of(b"the artifact"), any_blob())
        .await
        .unwrap();
    let loose = store
        .put_blob(stream_of(b"a loose upload"), any_blob())
        .await
        .unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let mut record = run.clone();
    record.archive = Some(ArchiveInfo {
        size_bytes: archive.size_bytes,
        sha256: archive.sha256.clone(),
        upload: UploadKind::Direct,
        entries: 1,
        extracted_bytes: 1,
    });
    record.artifacts.push(Artifact {
        artifact_id: ArtifactId::new(),
        run_id: run.id.clone(),
        path: "a".into(),
        kind: ArtifactKind::File,
        size_bytes: artifact_blob.size_bytes,
        sha256: artifact_blob.sha256.clone(),
        mode: 0o644,
        skipped: Vec::new(),
    });
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![],
                record: Some(record),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap();

    // A transfer with a chunk, a blob file whose row never committed, a crashed upload.
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: 4,
            sha256: Sha256Digest::of(b"abcd"),
        },
        chunk_size_bytes: 2,
        received: Default::default(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    store
        .put_chunk(&t.transfer_id, 0, Bytes::from_static(b"ab"))
        .await
        .unwrap();
    let orphan = Sha256Digest::of(b"orphan");
    let orphan_path = dir
        .path()
        .join("blobs")
        .join(&orphan.as_str()[..2])
        .join(&orphan.as_str()[2..]);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"orphan").unwrap();
    let stray = dir.path().join("tmp").join("blob-crashed");
    std::fs::write(&stray, b"half an upload").unwrap();

    // Young things survive a gc with the default ages.
    let report = store.gc().await.unwrap();
    assert_eq!(report, Default::default(), "nothing is old enough yet");
    assert!(store.has_blob(&loose.sha256).await.unwrap().is_some());
    assert!(orphan_path.exists() && stray.exists());

    // With every age at zero: only the unreferenced blob, the orphan file, the transfer and
    // the temp file go.
    let report = store
        .gc_with(GcPolicy {
            blob_grace: Duration::ZERO,
            transfer_ttl: Duration::ZERO,
            temp_ttl: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(report.blobs_deleted, 1, "{report:?}");
    assert_eq!(report.blob_bytes_freed, loose.size_bytes);
    assert_eq!(report.orphan_blob_files_deleted, 1);
    assert_eq!(report.transfers_deleted, 1);
    assert_eq!(report.temp_files_deleted, 1);

    assert_eq!(store.has_blob(&loose.sha256).await.unwrap(), None);
    assert!(store.open_blob(&loose.sha256).await.is_err());
    assert_eq!(
        read_all(store.open_blob(&archive.sha256).await.unwrap()),
        b"the archive"
    );
    assert_eq!(
        read_all(store.open_blob(&artifact_blob.sha256).await.unwrap()),
        b"the artifact"
    );
    assert!(!orphan_path.exists());
    assert!(!stray.exists());
    assert!(store.get_transfer(&t.transfer_id).await.is_err());
    assert!(
        !dir.path()
            .join("transfers")
            .join(t.transfer_id.as_str())
            .exists()
    );
    let left: Vec<_> = files_under(dir.path())
        .into_iter()
        .filter(|p| {
            !p.starts_with(dir.path().join("crownest.db"))
                && !p.to_string_lossy().contains("crownest.db")
        })
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only the two referenced blobs remain: {left:?}"
    );

    // The same bytes can be stored again after gc.
    let again = store
        .put_blob(stream_of(b"a loose upload"), any_blob())
        .await
        .unwrap();
    assert_eq!(
        read_all(store.open_blob(&again.sha256).await.unwrap()),
        b"a loose upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_a_transfer_that_is_still_active() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id,
        descriptor: ArchiveDescriptor {
            size_bytes: 4,
            sha256: Sha256Digest::of(b"abcd"),
        },
        chunk_size_bytes: 2,
        received: Default::default(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    store
        .put_chunk(&t.transfer_id, 1, Bytes::from_static(b"cd"))
        .await
        .unwrap();
    let policy = GcPolicy {
        blob_grace: HOUR,
        transfer_ttl: HOUR,
        temp_ttl: HOUR,
    };
    assert_eq!(store.gc_with(policy).await.unwrap().transfers_deleted, 0);
    store
        .put_chunk(&t.transfer_id, 0, Bytes::from_static(b"ab"))
        .await
        .unwrap();
    assert_eq!(
        read_all(store.open_transfer(&t.transfer_id).await.unwrap()),
        b"abcd"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_temp_file_gc_removed_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let stream = futures::StreamExt::boxed(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let put = {
        let store = store.clone();
        tokio::spawn(async move { store.put_blob(stream, any_blob()).await })
    };
    // More than the store keeps in memory before it makes a temp file (256 KiB).
    tx.send(Ok(Bytes::from(vec![b'x'; 300 * 1024])))
        .await
        .unwrap();
    // Wait for the temp file, then collect it as if the upload had stalled past temp_ttl.
    for _ in 0..500 {
        if std::fs::read_dir(dir.path().join("tmp")).unwrap().count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let zero = GcPolicy {
        blob_grace: Duration::ZERO,
        transfer_ttl: Duration::ZERO,
        temp_ttl: Duration::ZERO,
    };
    assert_eq!(store.gc_with(zero).await.unwrap().temp_files_deleted, 1);
    tx.send(Ok(Bytes::from_static(b"second half")))
        .await
        .unwrap();
    drop(tx);
    let err = put.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("temp file"), "{err}");
    assert!(
        !store.is_poisoned(),
        "a collected upload fails alone, the store goes on"
    );
    assert_eq!(
        store
            .has_blob(&Sha256Digest::of(b"first half, second half"))
            .await
            .unwrap(),
        None
    );
    let info = store
        .put_blob(stream_of(b"first half, second half"), any_blob())
        .await
        .unwrap();
    assert_eq!(
        read_all(store.open_blob(&info.sha256).await.unwrap()),
        b"first half, second half"
    );
}
