//! Poisoning: an I/O or SQLite failure while writing makes every later write fail loudly,
//! writes nothing partial, and leaves reads (and a reopened store) working.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use crownest_core::store::{Store, TransferRecord};
use crownest_core::{ArchiveDescriptor, Error, Sha256Digest, Timestamp, TransferId};
use crownest_store_sqlite::{Fault, SqliteStore};

fn is_poison(e: &Error) -> bool {
    matches!(e, Error::Store { message, .. } if message == "store poisoned")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_poisons_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store
        .commit(&run.id, events_commit(1, vec![out("before")]))
        .await
        .unwrap();

    store.inject_fault(Fault::WriteTransaction);
    let err = store
        .commit(&run.id, events_commit(2, vec![out("lost")]))
        .await
        .unwrap_err();
    assert!(is_poison(&err), "{err:?}");
    assert!(
        err.chain().contains("injected fault"),
        "the cause is in the chain: {}",
        err.chain()
    );
    assert!(store.is_poisoned());

    // Nothing of the failed commit is visible.
    assert_eq!(store.list_events(&run.id, 0, 10).await.unwrap().len(), 1);
    assert_eq!(store.get_run(&run.id).await.unwrap().next_seq, 2);

    // Every kind of write now fails, without retrying.
    let e = store
        .commit(&run.id, events_commit(2, vec![out("again")]))
        .await
        .unwrap_err();
    assert!(is_poison(&e), "{e:?}");
    assert!(
        e.chain().contains("injected fault"),
        "names the first failure: {}",
        e.chain()
    );
    assert!(
        !e.to_string().contains("injected fault"),
        "Display is its own level only: {e}"
    );
    assert!(is_poison(&store.create_run(new_run()).await.unwrap_err()));
    assert!(is_poison(&store.request_cancel(&run.id).await.unwrap_err()));
    assert!(is_poison(
        &store
            .put_blob(stream_of(b"x"), any_blob())
            .await
            .unwrap_err()
    ));
    assert!(is_poison(&store.gc().await.unwrap_err()));
    assert_eq!(
        store.list_events(&run.id, 0, 10).await.unwrap().len(),
        1,
        "still nothing new"
    );

    // A new instance starts from the durable state.
    drop(store);
    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert!(!store.is_poisoned());
    let sealed = store
        .commit(&run.id, events_commit(2, vec![out("after reopen")]))
        .await
        .unwrap();
    assert_eq!(sealed[0].seq, 2);
}

/// A small upload of bytes stored already is hashed in memory and no file is written for it
/// (a re-run of the same archive): a failing disk does not touch it; new small bytes still
/// go through the write (and its failure) as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_reupload_of_stored_bytes_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let data = b"blob bytes".repeat(100);
    let first = store.put_blob(stream_of(&data), any_blob()).await.unwrap();
    store.inject_fault(Fault::BlobWrite);
    let again = store.put_blob(stream_of(&data), any_blob()).await.unwrap();
    assert_eq!(again, first);
    assert!(store.create_run(new_run()).await.is_ok(), "not poisoned");
    let other = b"other bytes".repeat(100);
    let err = store
        .put_blob(stream_of(&other), any_blob())
        .await
        .unwrap_err();
    assert!(is_poison(&err), "{err:?}");
    assert_eq!(
        store.has_blob(&Sha256Digest::of(&other)).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_blob_write_poisons_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store.inject_fault(Fault::BlobWrite);
    let data = b"blob bytes".repeat(100);
    let err = store
        .put_blob(stream_of(&data), any_blob())
        .await
        .unwrap_err();
    assert!(is_poison(&err), "{err:?}");
    assert_eq!(
        store.has_blob(&Sha256Digest::of(&data)).await.unwrap(),
        None
    );
    assert!(
        files_under(dir.path())
            .iter()
            .all(|p| !p.starts_with(dir.path().join("tmp"))),
        "temp file removed"
    );
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(is_poison(&store.create_run(new_run()).await.unwrap_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_io_error_poisons() {
    // Root ignores permission bits, so break the temp directory itself: replace it with a
    // file, and creating an upload's temp file fails with a real I/O error (ENOTDIR).
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: 10,
            sha256: Sha256Digest::of(b"0123456789"),
        },
        chunk_size_bytes: 10,
        received: Default::default(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    std::fs::remove_dir(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp"), b"not a directory").unwrap();

    let err = store
        .put_chunk(&t.transfer_id, 0, Bytes::from_static(b"0123456789"))
        .await
        .unwrap_err();
    assert!(is_poison(&err), "{err:?}");
    assert!(err.chain().contains("chunk temp file"), "{}", err.chain());
    assert!(
        store
            .get_transfer(&t.transfer_id)
            .await
            .unwrap()
            .received
            .is_empty()
    );
    let e = store
        .commit(&run.id, events_commit(1, vec![out("x")]))
        .await
        .unwrap_err();
    assert!(is_poison(&e), "{e:?}");
    assert!(store.list_events(&run.id, 0, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_fails_the_whole_batch_and_restores_moved_files() {
    // A transfer delete (which moves its chunk directory away inside the transaction) in a
    // transaction that then fails: the directory is put back, the row stays.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id,
        descriptor: ArchiveDescriptor {
            size_bytes: 3,
            sha256: Sha256Digest::of(b"abc"),
        },
        chunk_size_bytes: 3,
        received: Default::default(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    store
        .put_chunk(&t.transfer_id, 0, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    store.inject_fault(Fault::WriteTransaction);
    assert!(is_poison(
        &store.delete_transfer(&t.transfer_id).await.unwrap_err()
    ));
    assert!(
        store
            .get_transfer(&t.transfer_id)
            .await
            .unwrap()
            .is_complete()
    );
    assert_eq!(
        read_all(store.open_transfer(&t.transfer_id).await.unwrap()),
        b"abc"
    );
}
