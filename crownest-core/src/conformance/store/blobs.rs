//! Blobs: content addressing, refusals, `discard_blob`, garbage collection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, RejectReason};
use crate::gc::GcPolicy;
use crate::ids::{ArtifactId, Sha256Digest};
use crate::run::{ArchiveDescriptor, ArchiveInfo, Artifact, ArtifactKind, UploadKind};
use crate::store::{BlobExpect, RunCommit, Store};

use super::*;

/// Blobs are content-addressed: same bytes, same digest, stored once; visible at once.
pub async fn blobs_are_content_addressed(store: Arc<dyn Store>) {
    let data = b"hello blob".repeat(1000);
    let d = Sha256Digest::of(&data);
    assert_eq!(store.has_blob(&d).await.unwrap(), None);
    let expect = BlobExpect {
        descriptor: None,
        max_bytes: 1 << 20,
    };
    let a = store.put_blob(stream_of(&data), expect).await.unwrap();
    let b = store.put_blob(stream_of(&data), expect).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.sha256, d);
    assert_eq!(a.size_bytes, data.len() as u64);
    assert_eq!(store.has_blob(&d).await.unwrap(), Some(data.len() as u64));
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut store.open_blob(&d).await.unwrap(), &mut back).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        store.open_blob(&Sha256Digest::of(b"nope")).await,
        Err(Error::NotFound { .. })
    ));
}

/// Size/digest mismatches and oversize blobs are `ArchiveRejected` and keep nothing.
pub async fn blob_mismatch_keeps_nothing(store: Arc<dyn Store>) {
    let data = b"some archive bytes".repeat(100);
    let real = Sha256Digest::of(&data);
    let wrong_size = ArchiveDescriptor {
        size_bytes: data.len() as u64 + 1,
        sha256: real.clone(),
    };
    let wrong_digest = ArchiveDescriptor {
        size_bytes: data.len() as u64,
        sha256: Sha256Digest::of(b"other"),
    };
    for (desc, max, reason) in [
        (Some(&wrong_size), 1 << 20, RejectReason::SizeMismatch),
        (Some(&wrong_digest), 1 << 20, RejectReason::DigestMismatch),
        (None, 100, RejectReason::TooLarge),
    ] {
        let err = store
            .put_blob(
                stream_of(&data),
                BlobExpect {
                    descriptor: desc,
                    max_bytes: max,
                },
            )
            .await
            .unwrap_err();
        match err {
            Error::ArchiveRejected { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("expected {reason:?}, got {other:?}"),
        }
        assert_eq!(
            store.has_blob(&real).await.unwrap(),
            None,
            "nothing kept after {reason:?}"
        );
    }
}

/// Stores three blobs and a run naming the first as its archive and the second as an
/// artifact; returns (archive, artifact, loose) digests.
async fn named_and_loose_blobs(store: &Arc<dyn Store>) -> [Sha256Digest; 3] {
    let archive = store
        .put_blob(stream_of(b"an archive"), any_blob())
        .await
        .unwrap();
    let artifact = store
        .put_blob(stream_of(b"an artifact"), any_blob())
        .await
        .unwrap();
    let loose = store
        .put_blob(stream_of(b"a refused upload"), any_blob())
        .await
        .unwrap();
    let run = created(store, None).await;
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
        path: "out.txt".into(),
        kind: ArtifactKind::File,
        size_bytes: artifact.size_bytes,
        sha256: artifact.sha256.clone(),
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
    [archive.sha256, artifact.sha256, loose.sha256]
}

/// `discard_blob` deletes only a blob no run and no artifact names, and says so.
pub async fn discard_blob_deletes_only_unnamed_blobs(store: Arc<dyn Store>) {
    let [archive, artifact, loose] = named_and_loose_blobs(&store).await;
    for named in [&archive, &artifact] {
        assert!(
            !store.discard_blob(named).await.unwrap(),
            "a named blob is not discarded"
        );
        assert!(
            store.has_blob(named).await.unwrap().is_some(),
            "a named blob is kept"
        );
    }
    assert!(
        store.discard_blob(&loose).await.unwrap(),
        "an unnamed blob is discarded"
    );
    assert_eq!(store.has_blob(&loose).await.unwrap(), None, "and gone");
    assert!(matches!(
        store.open_blob(&loose).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        !store.discard_blob(&loose).await.unwrap(),
        "discarding it again deletes nothing"
    );
    // The same bytes can be stored again afterwards.
    store
        .put_blob(stream_of(b"a refused upload"), any_blob())
        .await
        .unwrap();
    assert!(store.has_blob(&loose).await.unwrap().is_some());
}

/// `collect_garbage` keeps named blobs always and fresh blobs and transfers within their
/// ages; past the ages it deletes unnamed blobs and idle transfers, and reports them.
pub async fn collect_garbage_respects_names_and_ages(store: Arc<dyn Store>) {
    let [archive, artifact, loose] = named_and_loose_blobs(&store).await;
    let run = created(&store, None).await;
    let t = transfer_for(&run.id, &[7; 10]);
    store.create_transfer(&t).await.unwrap();

    let patient = GcPolicy::default();
    let report = store.collect_garbage(&patient).await.unwrap();
    assert_eq!(report.blobs_deleted, 0, "fresh blobs are kept: {report:?}");
    assert_eq!(
        report.transfers_deleted, 0,
        "fresh transfers are kept: {report:?}"
    );
    assert!(store.has_blob(&loose).await.unwrap().is_some());
    assert!(store.get_transfer(&t.transfer_id).await.is_ok());

    let zero = GcPolicy {
        blob_grace: Duration::ZERO,
        transfer_ttl: Duration::ZERO,
        temp_ttl: Duration::ZERO,
    };
    let report = store.collect_garbage(&zero).await.unwrap();
    assert_eq!(report.blobs_deleted, 1, "only the unnamed blob: {report:?}");
    assert_eq!(report.blob_bytes_freed, b"a refused upload".len() as u64);
    assert_eq!(report.transfers_deleted, 1, "{report:?}");
    assert_eq!(store.has_blob(&loose).await.unwrap(), None);
    assert!(
        store.has_blob(&archive).await.unwrap().is_some(),
        "archive kept"
    );
    assert!(
        store.has_blob(&artifact).await.unwrap().is_some(),
        "artifact kept"
    );
    assert!(matches!(
        store.get_transfer(&t.transfer_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(store.list_transfers(None).await.unwrap().is_empty());
}
