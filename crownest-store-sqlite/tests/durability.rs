//! Which write transactions are fsynced (`synchronous=FULL`) and which are not
//! (`synchronous=NORMAL`), and the WAL file kept across opens. What each level means for a
//! run after a crash or a power loss is argued in the crate docs ("Durability") and in
//! docs/engine.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crownest_core::store::Store;
use crownest_core::{RunStatus, Sha256Digest};
use crownest_store_sqlite::{GcPolicy, SqliteConfig, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_terminal_commits_and_deletions_are_fsynced() {
    let store = TempStore::open().await;
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store
        .commit(&run.id, events_commit(1, vec![out("one"), out("two")]))
        .await
        .unwrap();
    store
        .put_blob(stream_of(b"some archive"), any_blob())
        .await
        .unwrap();
    store.request_cancel(&run.id).await.unwrap();
    let before = store.write_stats();
    assert!(before.transactions >= 4, "{before:?}");
    assert_eq!(before.synced_transactions, 0, "{before:?}");

    // The terminal commit (record, events, evidence) is fsynced.
    let stored = store.get_run(&run.id).await.unwrap();
    store
        .commit(&run.id, terminal_commit(&stored))
        .await
        .unwrap();
    let after = store.write_stats();
    assert_eq!(after.transactions, before.transactions + 1, "{after:?}");
    assert_eq!(after.synced_transactions, 1, "{after:?}");
    assert!(store.get_run(&run.id).await.unwrap().status.is_terminal());

    // A deletion (gc moves files away after its commit) is fsynced too.
    let orphan = store
        .put_blob(stream_of(b"nobody names this"), any_blob())
        .await
        .unwrap();
    let report = store
        .gc_with(GcPolicy {
            blob_grace: Duration::ZERO,
            ..GcPolicy::default()
        })
        .await
        .unwrap();
    assert!(report.blobs_deleted >= 1, "{report:?}");
    assert_eq!(store.write_stats().synced_transactions, 2);
    assert_eq!(store.has_blob(&orphan.sha256).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_every_commit_fsyncs_every_transaction() {
    let store = TempStore::open_with(SqliteConfig::default().with_sync_every_commit(true)).await;
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store
        .commit(&run.id, events_commit(1, vec![out("one")]))
        .await
        .unwrap();
    store.request_cancel(&run.id).await.unwrap();
    let stats = store.write_stats();
    assert!(stats.transactions >= 3, "{stats:?}");
    assert_eq!(stats.synced_transactions, stats.transactions, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_commits_are_there_after_reopen_and_made_durable_by_the_next_synced_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("crownest.db-wal");
    let (id, sha) = {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let run = store.create_run(new_run()).await.unwrap().into_run();
        store
            .commit(&run.id, events_commit(1, vec![out("one"), out("two")]))
            .await
            .unwrap();
        let blob = store
            .put_blob(stream_of(b"archive"), any_blob())
            .await
            .unwrap();
        assert_eq!(store.write_stats().synced_transactions, 0);
        store.close().await;
        (run.id, blob.sha256)
    };
    // The store's threads close their connections as they stop.
    std::thread::sleep(Duration::from_millis(200));
    // A short WAL is neither checkpointed nor deleted when the store closes (no fsync at
    // exit); the next open reads it back.
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    // A process that was not killed lost nothing: every acknowledged write is there.
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let stored = store.get_run(&id).await.unwrap();
    assert_eq!(stored.status, RunStatus::AwaitingArchive);
    assert_eq!(store.list_events(&id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(store.has_blob(&sha).await.unwrap(), Some(7));
    let digest: &Sha256Digest = &sha;
    assert_eq!(read_all(store.open_blob(digest).await.unwrap()), b"archive");
    store.commit(&id, terminal_commit(&stored)).await.unwrap();
    assert_eq!(store.write_stats().synced_transactions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_connection_closing_last_neither_checkpoints_nor_removes_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("crownest.db-wal");
    let db = dir.path().join("crownest.db");
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store
        .commit(&run.id, events_commit(1, vec![out("one")]))
        .await
        .unwrap();
    // A read opens a read connection; closing the store closes the writer's (a short
    // WAL: no checkpoint).
    assert_eq!(store.get_run(&run.id).await.unwrap().id, run.id);
    store.close().await;
    let sizes = || {
        (
            std::fs::metadata(&wal).unwrap().len(),
            std::fs::metadata(&db).unwrap().len(),
        )
    };
    let before = sizes();
    assert!(before.0 > 0);
    assert_eq!(store.list_events(&run.id, 0, 10).await.unwrap().len(), 1);
    // The read connection is the database's last: closing it copies nothing into the
    // database and keeps the WAL as it is.
    drop(store);
    assert_eq!(sizes(), before);

    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(store.list_events(&run.id, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_checkpoints_a_long_wal_so_the_next_open_does_not_read_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("crownest.db-wal");
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    // ~6 MiB of output: more WAL than close leaves alone.
    let chunk = "x".repeat(64 * 1024);
    for i in 0..96u64 {
        store
            .commit(&run.id, events_commit(i + 1, vec![out(&chunk)]))
            .await
            .unwrap();
    }
    assert!(std::fs::metadata(&wal).unwrap().len() > 4 * 1024 * 1024);
    // Other connections of the store (readers, the checkpointer) are still open: the
    // checkpoint does not need the last connection to close.
    store.close().await;
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    let events = store.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(events.len(), 96);
    drop(store);

    // Reopened: nothing to read back, everything there.
    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(store.list_events(&run.id, 0, 1000).await.unwrap().len(), 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_a_wal_past_32_mib_into_the_database() {
    // Its connection is opened at its first checkpoint, not with the store.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crownest.db");
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let before = std::fs::metadata(&db).unwrap().len();
    // ~40 MiB of output, in 64 KiB events: the WAL passes 32 MiB and asks for a checkpoint.
    let chunk = "y".repeat(64 * 1024);
    for i in 0..640u64 {
        store
            .commit(&run.id, events_commit(i + 1, vec![out(&chunk)]))
            .await
            .unwrap();
    }
    // The passive checkpoint runs beside the writer: the database file takes the pages.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&db).unwrap().len() < before + 16 * 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint copied the WAL into the database within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.list_events(&run.id, 0, 1000).await.unwrap().len(),
        640
    );
}

/// This workspace builds SQLite without its per-process directory fsync of the WAL
/// (`.cargo/config.toml`); the store fsyncs the directory itself when an open creates the
/// database or its WAL. A build that lost the flag would pay that fsync in every command
/// again, unnoticed, without this test.
#[test]
fn this_build_of_sqlite_leaves_the_directory_sync_to_the_store() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        options.iter().any(|o| o == "DISABLE_DIRSYNC"),
        "{options:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_wal_was_removed_recreates_it_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store.create_run(new_run()).await.unwrap();
    store.close().await;
    let wal = dir.path().join("crownest.db-wal");
    assert!(wal.exists(), "the WAL is kept between opens");
    // A tool that opens the database and closes it last: SQLite then checkpoints and
    // deletes the WAL (the sqlite3 shell does).
    {
        let conn = rusqlite::Connection::open(dir.path().join("crownest.db")).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    assert!(!wal.exists());
    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert!(wal.exists());
    assert_eq!(
        store
            .list_runs(&crownest_core::store::RunQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );
    store.close().await;
}
