//! The `object_store` blob backend (`file://` → `LocalFileSystem`) against a real
//! PostgreSQL: a staged upload whose consecutive chunks go through two store instances
//! (two hosts sharing only the database and the bucket URL); refused uploads leave no object
//! and no row; gc removes unnamed objects and stale temp objects and keeps named ones; a
//! 64 MiB blob streams through a bounded buffer; bad blob URLs are typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use crownest_core::gc::GcPolicy;
use crownest_core::run::{ArchiveInfo, UploadKind};
use crownest_core::store::{BlobExpect, ByteStream, RunCommit, Store, TransferRecord};
use crownest_core::{ArchiveDescriptor, Error, RejectReason, Sha256Digest, Timestamp, TransferId};
use crownest_store_postgres::{
    BlobLocation, BlobUrlProblem, PART_SIZE, PARTS_IN_FLIGHT, PostgresConfig, PostgresStore,
};
use futures::StreamExt as _;
use object_store::ObjectStoreExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use sha2::Digest as _;

fn zero() -> GcPolicy {
    GcPolicy {
        blob_grace: std::time::Duration::ZERO,
        transfer_ttl: std::time::Duration::ZERO,
        temp_ttl: std::time::Duration::ZERO,
    }
}

/// Every file under `dir` (hidden staging files included).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Rows in the store's `blobs` table.
async fn blob_rows(t: &TempStore) -> i64 {
    connect(&t.url, &t.schema)
        .await
        .query_one("SELECT count(*) FROM blobs", &[])
        .await
        .unwrap()
        .get(0)
}

/// A store instance on the same database and bucket URL, opened from scratch as another
/// host would (its own pool, its own object-store client).
async fn another_host(t: &TempStore) -> PostgresStore {
    let blobs = BlobLocation::parse(t.blob_url.as_deref().unwrap()).unwrap();
    assert!(matches!(blobs, BlobLocation::Url(_)));
    let config = PostgresConfig::new_with_blobs(&t.url, blobs).with_schema(&t.schema);
    PostgresStore::open(config).await.unwrap()
}

/// `n` bytes of a deterministic pattern, as a stream of 64 KiB chunks generated lazily
/// (never all in memory), and the digest of the whole.
fn pattern(n: u64) -> (ByteStream, Sha256Digest) {
    const CHUNK: u64 = 64 * 1024;
    let piece = move |i: u64| -> Bytes {
        let len = CHUNK.min(n - i * CHUNK) as usize;
        (0..len)
            .map(|j| ((i as usize * 7 + j * 13) % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let pieces = n.div_ceil(CHUNK);
    let mut hasher = sha2::Sha256::new();
    for i in 0..pieces {
        hasher.update(piece(i));
    }
    let digest = Sha256Digest::from_bytes(&hasher.finalize().into());
    let stream = futures::stream::iter(0..pieces)
        .map(move |i| Ok(piece(i)))
        .boxed();
    (stream, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_upload_through_two_hosts_completes_and_verifies() {
    let Some(t) = TempStore::open_object_store().await else {
        return;
    };
    let host_a = another_host(&t).await;
    let host_b = another_host(&t).await;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let descriptor = ArchiveDescriptor {
        size_bytes: data.len() as u64,
        sha256: Sha256Digest::of(&data),
    };
    let run = host_a.create_run(new_run()).await.unwrap().into_run();
    let transfer = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: descriptor.clone(),
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    host_a.create_transfer(&transfer).await.unwrap();
    // Consecutive chunks alternate between the hosts.
    for (i, chunk) in data.chunks(1000).enumerate() {
        let host = if i % 2 == 0 { &host_a } else { &host_b };
        host.put_chunk(
            &transfer.transfer_id,
            i as u64,
            Bytes::copy_from_slice(chunk),
        )
        .await
        .unwrap();
    }
    // A chunk sent again to the other host: the same bytes are a no-op, others refused.
    host_b
        .put_chunk(
            &transfer.transfer_id,
            0,
            Bytes::copy_from_slice(&data[..1000]),
        )
        .await
        .unwrap();
    let conflict = host_b
        .put_chunk(&transfer.transfer_id, 0, Bytes::from(vec![0u8; 1000]))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, Error::ChunkRejected { .. }),
        "{conflict:?}"
    );
    let record = host_a.get_transfer(&transfer.transfer_id).await.unwrap();
    assert_eq!(record.received.len(), 10, "every chunk recorded once");
    // Each chunk is an object of its own in the bucket.
    let chunk_files = files_under(&t.blob_dir.path().join("transfers"));
    assert_eq!(chunk_files.len(), 10, "{chunk_files:?}");

    // Host B reads the whole transfer (chunks written by both) and stores it as the blob,
    // verified against the descriptor; host A sees it.
    let reader = host_b.open_transfer(&transfer.transfer_id).await.unwrap();
    let joined = tokio::task::spawn_blocking(move || read_all(reader))
        .await
        .unwrap();
    assert_eq!(joined, data);
    let info = host_b
        .put_blob(
            stream_of(&joined),
            BlobExpect {
                descriptor: Some(&descriptor),
                max_bytes: u64::MAX,
            },
        )
        .await
        .unwrap();
    assert_eq!(info.sha256, descriptor.sha256);
    host_b.delete_transfer(&transfer.transfer_id).await.unwrap();
    assert_eq!(
        host_a.has_blob(&descriptor.sha256).await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        read_all(host_a.open_blob(&descriptor.sha256).await.unwrap()),
        data
    );
    assert!(
        files_under(&t.blob_dir.path().join("transfers")).is_empty(),
        "the transfer's chunk objects are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_leave_no_object_and_no_row() {
    let Some(t) = TempStore::open_object_store().await else {
        return;
    };
    let small = b"declared one way, sent another".to_vec();
    let large = vec![7u8; PART_SIZE * 2 + 123]; // goes through a multipart upload
    for data in [&small, &large] {
        // Wrong digest.
        let wrong_digest = ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(b"something else"),
        };
        // Wrong size.
        let wrong_size = ArchiveDescriptor {
            size_bytes: data.len() as u64 + 1,
            sha256: Sha256Digest::of(data),
        };
        for d in [&wrong_digest, &wrong_size] {
            let err = t
                .put_blob(
                    stream_of(data),
                    BlobExpect {
                        descriptor: Some(d),
                        max_bytes: u64::MAX,
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::ArchiveRejected { .. }), "{err:?}");
        }
        // Over max_bytes.
        let err = t
            .put_blob(
                stream_of(data),
                BlobExpect {
                    descriptor: None,
                    max_bytes: data.len() as u64 - 1,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ArchiveRejected {
                    reason: RejectReason::TooLarge,
                    ..
                }
            ),
            "{err:?}"
        );
        // A stream that fails half-way.
        let half = Bytes::copy_from_slice(&data[..data.len() / 2]);
        let failing: ByteStream =
            futures::stream::iter([Ok(half), Err(std::io::Error::other("the client went away"))])
                .boxed();
        let err = t.put_blob(failing, any_blob()).await.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
    // Aborts are cleaned up in the background (dropped staging objects): give them a moment.
    for _ in 0..50 {
        if files_under(t.blob_dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        files_under(t.blob_dir.path()),
        Vec::<PathBuf>::new(),
        "no object, no staging file"
    );
    assert_eq!(blob_rows(&t).await, 0, "no row");
    let stats = t.blob_stream_stats().unwrap();
    assert_eq!(stats.aborted_uploads, 8, "{stats:?}");
    assert_eq!(stats.multipart_uploads, 0, "none completed: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unnamed_and_stale_objects_and_keeps_named_ones() {
    let Some(t) = TempStore::open_object_store().await else {
        return;
    };
    let root = t.blob_dir.path();
    let bucket = LocalFileSystem::new_with_prefix(root).unwrap();
    // An object at a blob address with no row (a put whose commit failed).
    let orphan = Sha256Digest::of(b"orphan");
    let orphan_key = ObjectPath::from(format!(
        "blobs/{}/{}",
        &orphan.as_str()[..2],
        &orphan.as_str()[2..]
    ));
    bucket
        .put(&orphan_key, Bytes::from_static(b"orphan").into())
        .await
        .unwrap();
    // Something there that is not a blob by name: not ours.
    let stranger = ObjectPath::from("blobs/README");
    bucket
        .put(&stranger, Bytes::from_static(b"not a blob").into())
        .await
        .unwrap();
    // A crashed upload's staged object, and a crashed multipart upload's hidden part file.
    let stale_tmp = ObjectPath::from("tmp/blob-crashed");
    bucket
        .put(&stale_tmp, Bytes::from_static(b"partial").into())
        .await
        .unwrap();
    std::fs::write(root.join("tmp").join("blob-multipart#1"), b"part").unwrap();
    // Chunk objects of a transfer whose row is gone.
    let gone = TransferId::new();
    bucket
        .put(
            &ObjectPath::from(format!("transfers/{}/0", gone.as_str())),
            Bytes::from_static(b"chunk").into(),
        )
        .await
        .unwrap();
    // An uploaded blob no run names, and one a run names as its archive.
    let unnamed = t
        .put_blob(stream_of(b"never attached"), any_blob())
        .await
        .unwrap();
    let named = t
        .put_blob(stream_of(b"the run's archive"), any_blob())
        .await
        .unwrap();
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let mut record = run.clone();
    record.archive = Some(ArchiveInfo {
        size_bytes: named.size_bytes,
        sha256: named.sha256.clone(),
        upload: UploadKind::Direct,
        entries: 1,
        extracted_bytes: 1,
    });
    t.commit(
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
    .unwrap();

    // Patient gc: young things stay, chunks without a transfer go at once.
    let patient = t.collect_garbage(&GcPolicy::default()).await.unwrap();
    assert_eq!(patient.orphan_blob_files_deleted, 0, "{patient:?}");
    assert_eq!(patient.blobs_deleted, 0, "{patient:?}");
    assert_eq!(patient.temp_files_deleted, 0, "{patient:?}");
    assert!(bucket.head(&orphan_key).await.is_ok());
    assert!(
        !root.join("transfers").join(gone.as_str()).exists(),
        "chunk objects without a transfer row go at once"
    );

    let report = t.collect_garbage(&zero()).await.unwrap();
    assert_eq!(report.orphan_blob_files_deleted, 1, "{report:?}");
    assert_eq!(report.blobs_deleted, 1, "the unnamed upload: {report:?}");
    assert_eq!(
        report.temp_files_deleted, 2,
        "the staged object and the hidden part file: {report:?}"
    );
    assert!(bucket.head(&orphan_key).await.is_err(), "orphan removed");
    assert!(bucket.head(&stale_tmp).await.is_err(), "stale temp removed");
    assert!(!root.join("tmp").join("blob-multipart#1").exists());
    assert!(bucket.head(&stranger).await.is_ok(), "not ours: kept");
    assert_eq!(t.has_blob(&unnamed.sha256).await.unwrap(), None);
    assert!(
        files_under(root)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(&unnamed.sha256.as_str()[2..])),
        "the unnamed blob's object is gone"
    );
    // The named blob: row and bytes kept, readable from another host.
    assert_eq!(
        t.has_blob(&named.sha256).await.unwrap(),
        Some(named.size_bytes)
    );
    let other = another_host(&t).await;
    assert_eq!(
        read_all(other.open_blob(&named.sha256).await.unwrap()),
        b"the run's archive"
    );
    assert!(!t.discard_blob(&named.sha256).await.unwrap(), "named: kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_blob_streams_through_a_bounded_buffer() {
    let Some(t) = TempStore::open_object_store().await else {
        return;
    };
    const SIZE: u64 = 64 * 1024 * 1024;
    let (stream, digest) = pattern(SIZE);
    let descriptor = ArchiveDescriptor {
        size_bytes: SIZE,
        sha256: digest.clone(),
    };
    let info = t
        .put_blob(
            stream,
            BlobExpect {
                descriptor: Some(&descriptor),
                max_bytes: SIZE,
            },
        )
        .await
        .unwrap();
    assert_eq!(info.sha256, digest);
    let stats = t.blob_stream_stats().unwrap();
    // The design: parts of PART_SIZE, at most PARTS_IN_FLIGHT in flight plus the one being
    // filled — an eighth of the blob at most here, whatever its size.
    assert_eq!(stats.multipart_uploads, 1, "{stats:?}");
    assert_eq!(stats.single_puts, 0, "{stats:?}");
    assert_eq!(
        stats.parts_uploaded,
        SIZE.div_ceil(PART_SIZE as u64),
        "{stats:?}"
    );
    let bound = ((PARTS_IN_FLIGHT + 1) * PART_SIZE) as u64;
    assert!(stats.peak_buffered_bytes <= bound, "{stats:?}");
    assert!(stats.peak_buffered_bytes <= SIZE / 2, "{stats:?}");
    assert!(stats.peak_buffered_bytes >= PART_SIZE as u64, "{stats:?}");

    // Read back on another host, hashed as it streams (a 64 KiB buffer).
    let other = another_host(&t).await;
    let reader = other.open_blob(&digest).await.unwrap();
    let (read, back) = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
        }
        (total, Sha256Digest::from_bytes(&hasher.finalize().into()))
    })
    .await
    .unwrap();
    assert_eq!(read, SIZE);
    assert_eq!(back, digest);
    // Stored once, at its address.
    let object = t
        .blob_dir
        .path()
        .join("blobs")
        .join(&digest.as_str()[..2])
        .join(&digest.as_str()[2..]);
    assert_eq!(std::fs::metadata(object).unwrap().len(), SIZE);
    assert!(files_under(&t.blob_dir.path().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_opened_as_a_path_and_as_a_file_url_is_one_store() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    // The directory backend wrote it...
    let info = t
        .put_blob(stream_of(b"written by the directory backend"), any_blob())
        .await
        .unwrap();
    // ...and the object-store backend on file:///<same dir> reads it, and vice versa.
    let url = format!("file://{}", t.blob_dir.path().display());
    let objects = PostgresStore::open(
        PostgresConfig::new(&t.url, "/unused")
            .with_schema(&t.schema)
            .with_blob_url(&url)
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        read_all(objects.open_blob(&info.sha256).await.unwrap()),
        b"written by the directory backend"
    );
    let back = objects
        .put_blob(stream_of(b"written through object_store"), any_blob())
        .await
        .unwrap();
    assert_eq!(
        read_all(t.open_blob(&back.sha256).await.unwrap()),
        b"written through object_store"
    );
}

#[tokio::test]
async fn bad_blob_locations_are_refused_with_typed_errors() {
    let base = || PostgresConfig::new("postgres://127.0.0.1:1/unused", "/unused");
    for (url, want) in [
        ("ftp://files/blobs", "unsupported"),
        ("file://somehost/blobs", "invalid"),
        ("file:///", "invalid"),
        ("::not a url::", "malformed"),
    ] {
        let err = base().with_blob_url(url).unwrap_err();
        assert!(err.to_string().contains(url), "{err}");
        let got = match err.problem {
            BlobUrlProblem::UnsupportedScheme(_) => "unsupported",
            BlobUrlProblem::Invalid(_) => "invalid",
            BlobUrlProblem::Malformed(_) => "malformed",
            BlobUrlProblem::FeatureDisabled { .. } => "feature",
            _ => "other",
        };
        assert_eq!(got, want, "{url}: {err}");
    }
    // A URL given where a directory is expected is refused at open, before any connection
    // (the server URL above is not reachable).
    let err = PostgresStore::open(PostgresConfig::new(
        "postgres://127.0.0.1:1/unused",
        "s3://bucket/blobs",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidSpec { .. }), "{err:?}");
}
