//! Blob bytes and rows stay in step across store instances (processes, hosts): a row never
//! names missing bytes, a discarded blob cannot be attached afterwards, and gc removes
//! bytes nothing names while keeping what is named.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use crownest_core::gc::GcPolicy;
use crownest_core::run::{ArchiveInfo, UploadKind};
use crownest_core::store::{RunCommit, Store, TransferRecord};
use crownest_core::{ArchiveDescriptor, Error, Sha256Digest, Timestamp, TransferId};

fn zero() -> GcPolicy {
    GcPolicy {
        blob_grace: std::time::Duration::ZERO,
        transfer_ttl: std::time::Duration::ZERO,
        temp_ttl: std::time::Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_racing_a_discard_never_leaves_a_row_without_bytes() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let other = t.reopen().await;
    let data = b"raced bytes".repeat(5000);
    let sha = Sha256Digest::of(&data);
    for _ in 0..25 {
        let (put, discarded) = tokio::join!(
            t.put_blob(stream_of(&data), any_blob()),
            other.discard_blob(&sha)
        );
        put.unwrap();
        discarded.unwrap();
        // Whichever won, the row and the bytes agree.
        match t.has_blob(&sha).await.unwrap() {
            Some(size) => {
                assert_eq!(size, data.len() as u64);
                assert_eq!(read_all(other.open_blob(&sha).await.unwrap()), data);
            }
            None => assert!(matches!(
                t.open_blob(&sha).await,
                Err(Error::NotFound { .. })
            )),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_blob_cannot_be_attached_afterwards() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let info = t
        .put_blob(stream_of(b"refused elsewhere"), any_blob())
        .await
        .unwrap();
    // Another host refused these bytes and discarded them...
    assert!(t.reopen().await.discard_blob(&info.sha256).await.unwrap());
    // ...while this one attaches them to a run: the commit is refused, nothing written.
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let mut record = run.clone();
    record.archive = Some(ArchiveInfo {
        size_bytes: info.size_bytes,
        sha256: info.sha256.clone(),
        upload: UploadKind::Direct,
        entries: 1,
        extracted_bytes: 1,
    });
    let err = t
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![out("attached")],
                record: Some(record),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "blob", .. }),
        "{err:?}"
    );
    assert_eq!(t.get_run(&run.id).await.unwrap(), run, "run unchanged");
    assert!(t.list_events(&run.id, 0, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_bytes_without_rows_and_keeps_named_ones() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let root = t.blob_dir.path();
    // Bytes whose row never committed (a crash between the rename and the commit).
    let orphan = Sha256Digest::of(b"orphan");
    let orphan_path = root
        .join("blobs")
        .join(&orphan.as_str()[..2])
        .join(&orphan.as_str()[2..]);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"orphan").unwrap();
    // A file there that is not a blob by name is not ours to delete.
    let stranger = root.join("blobs").join("README");
    std::fs::write(&stranger, b"not a blob").unwrap();
    // Chunk bytes of a transfer whose row is gone, and a crashed upload's temp file.
    let gone = TransferId::new();
    let gone_dir = root.join("transfers").join(gone.as_str());
    std::fs::create_dir_all(&gone_dir).unwrap();
    std::fs::write(gone_dir.join("0"), b"chunk").unwrap();
    std::fs::write(root.join("tmp").join("blob-crashed"), b"partial").unwrap();
    // A live transfer with a chunk, and a blob a run names.
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let live = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: 4,
            sha256: Sha256Digest::of(b"live"),
        },
        chunk_size_bytes: 4,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    t.create_transfer(&live).await.unwrap();
    t.put_chunk(&live.transfer_id, 0, Bytes::from_static(b"live"))
        .await
        .unwrap();

    let patient = t.collect_garbage(&GcPolicy::default()).await.unwrap();
    assert_eq!(patient.orphan_blob_files_deleted, 0, "young bytes are kept");
    assert!(
        !gone_dir.exists(),
        "chunks without a transfer row go at once"
    );
    assert!(orphan_path.exists());

    let report = t.collect_garbage(&zero()).await.unwrap();
    assert_eq!(report.orphan_blob_files_deleted, 1, "{report:?}");
    assert!(report.temp_files_deleted >= 1, "{report:?}");
    assert_eq!(
        report.transfers_deleted, 1,
        "the idle live transfer: {report:?}"
    );
    assert!(!orphan_path.exists());
    assert!(
        stranger.exists(),
        "a file that is not a blob by name is kept"
    );
    assert!(
        !root
            .join("transfers")
            .join(live.transfer_id.as_str())
            .exists()
    );
}
