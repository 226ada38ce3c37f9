//! Blobs and chunks on disk: what is (and is not) left in the store directory.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use crownest_core::store::{BlobExpect, Store};
use crownest_core::{ArchiveDescriptor, Error, RejectReason, Sha256Digest};
use futures::StreamExt as _;

fn non_db_files(t: &TempStore) -> Vec<std::path::PathBuf> {
    files_under(t.dir.path())
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("crownest.db")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_one_file_named_by_its_digest() {
    let t = TempStore::open().await;
    // 8 MiB in 64 KiB pieces, streamed (several write buffers).
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let sha = Sha256Digest::of(&data);
    let descriptor = ArchiveDescriptor {
        size_bytes: data.len() as u64,
        sha256: sha.clone(),
    };
    let expect = BlobExpect {
        descriptor: Some(&descriptor),
        max_bytes: data.len() as u64,
    };
    let info = t
        .put_blob(futures::stream::iter(pieces).boxed(), expect)
        .await
        .unwrap();
    assert_eq!(info.sha256, sha);
    t.put_blob(stream_of(&data), any_blob()).await.unwrap();
    let files = non_db_files(&t);
    let expected = t
        .dir
        .path()
        .join("blobs")
        .join(&sha.as_str()[..2])
        .join(&sha.as_str()[2..]);
    assert_eq!(
        files,
        vec![expected.clone()],
        "stored once, content-addressed"
    );
    assert_eq!(std::fs::read(&expected).unwrap(), data);
    assert_eq!(read_all(t.open_blob(&sha).await.unwrap()), data);

    // An empty blob is a blob too.
    let empty = t.put_blob(stream_of(b""), any_blob()).await.unwrap();
    assert_eq!(empty.size_bytes, 0);
    assert_eq!(read_all(t.open_blob(&empty.sha256).await.unwrap()), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_upload_leaves_no_file() {
    let t = TempStore::open().await;
    let data = b"archive".repeat(1000);
    let wrong = ArchiveDescriptor {
        size_bytes: data.len() as u64,
        sha256: Sha256Digest::of(b"other"),
    };
    for (expect, reason) in [
        (
            BlobExpect {
                descriptor: Some(&wrong),
                max_bytes: u64::MAX,
            },
            RejectReason::DigestMismatch,
        ),
        (
            BlobExpect {
                descriptor: None,
                max_bytes: 4000,
            },
            RejectReason::TooLarge,
        ),
    ] {
        match t.put_blob(stream_of(&data), expect).await {
            Err(Error::ArchiveRejected { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("{other:?}"),
        }
    }
    assert!(non_db_files(&t).is_empty(), "{:?}", non_db_files(&t));
    assert!(
        !t.is_poisoned(),
        "a rejected upload is the client's fault, not the store's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_abandoned_upload_stream_leaves_no_file() {
    let t = TempStore::open().await;
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"some bytes")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ])
    .boxed();
    let err = t.put_blob(failing, any_blob()).await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!t.is_poisoned());

    // A stream that never ends, abandoned by dropping the future (a client disconnect).
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
    let pending = tokio_stream_of(rx);
    let put = t.put_blob(pending, any_blob());
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), put)
            .await
            .is_err()
    );
    drop(tx);
    assert!(non_db_files(&t).is_empty(), "{:?}", non_db_files(&t));
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> crownest_core::store::ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_chunks_are_files_until_the_transfer_is_deleted() {
    let t = TempStore::open().await;
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let data = b"0123456789abcdef".to_vec();
    let tr = crownest_core::store::TransferRecord {
        transfer_id: crownest_core::TransferId::new(),
        run_id: run.id,
        descriptor: ArchiveDescriptor {
            size_bytes: 16,
            sha256: Sha256Digest::of(&data),
        },
        chunk_size_bytes: 5,
        received: Default::default(),
        created_at: crownest_core::Timestamp::now(),
    };
    t.create_transfer(&tr).await.unwrap();
    for i in [3u64, 1, 0, 2] {
        let s = usize::try_from(i).unwrap() * 5;
        t.put_chunk(
            &tr.transfer_id,
            i,
            Bytes::copy_from_slice(&data[s..(s + 5).min(16)]),
        )
        .await
        .unwrap();
    }
    let chunk_dir = t.dir.path().join("transfers").join(tr.transfer_id.as_str());
    assert_eq!(files_under(&chunk_dir).len(), 4);
    assert_eq!(std::fs::read(chunk_dir.join("3")).unwrap(), b"f");
    let err = t
        .put_chunk(&tr.transfer_id, 3, Bytes::from_static(b"toolong"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSpec { .. }), "{err:?}");
    assert_eq!(
        read_all(t.open_transfer(&tr.transfer_id).await.unwrap()),
        data
    );
    t.delete_transfer(&tr.transfer_id).await.unwrap();
    assert!(!chunk_dir.exists());
    assert!(non_db_files(&t).is_empty(), "{:?}", non_db_files(&t));
    // Deleting again, or an id that never existed, is fine.
    t.delete_transfer(&tr.transfer_id).await.unwrap();
}
