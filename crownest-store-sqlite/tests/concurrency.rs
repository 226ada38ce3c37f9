//! Concurrency: many tasks, group commit, and two store instances (two processes) sharing
//! one directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use crownest_core::event::verify_chain;
use crownest_core::store::Store;
use crownest_core::{Error, RunId};
use crownest_store_sqlite::{SqliteConfig, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_tasks_append_to_fifty_runs() {
    let t = TempStore::open().await;
    let store = Arc::new(t.store.clone());
    let mut tasks = Vec::new();
    for task in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let run = store.create_run(new_run()).await.unwrap().into_run();
            let mut next = 1;
            for i in 0..40 {
                // Batches of 1..=3 events, like the engine's coalesced output.
                let n = 1 + (i + task) % 3;
                let events = (0..n)
                    .map(|k| out(&format!("task {task} commit {i} event {k}")))
                    .collect();
                let sealed = store
                    .commit(&run.id, events_commit(next, events))
                    .await
                    .unwrap();
                assert_eq!(sealed.first().unwrap().seq, next);
                next += n as u64;
            }
            (run.id, next - 1)
        }));
    }
    for t in tasks {
        let (id, count) = t.await.unwrap();
        let events = store.list_events(&id, 0, 10_000).await.unwrap();
        assert_eq!(events.len() as u64, count);
        let summary = verify_chain(&id, &events).unwrap();
        let run = store.get_run(&id).await.unwrap();
        assert_eq!(run.next_seq, count + 1);
        assert_eq!(summary.chain_head, run.chain_head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_commit_does_not_fail_its_batch() {
    // A long linger makes the writer group the concurrent commits into few transactions.
    let t = TempStore::open_with(
        SqliteConfig::new()
            .with_batch_linger(Duration::from_millis(20))
            .with_max_batch_delay(Duration::from_millis(200)),
    )
    .await;
    let store = Arc::new(t.store.clone());
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(store.create_run(new_run()).await.unwrap().into_run().id);
    }
    let before = store.write_stats();
    let mut tasks = Vec::new();
    for (i, id) in runs.iter().enumerate() {
        let store = store.clone();
        let id = id.clone();
        // Every other commit names a stale seq and must be refused alone.
        let expected = if i % 2 == 0 { 1 } else { 7 };
        tasks.push(tokio::spawn(async move {
            store
                .commit(&id, events_commit(expected, vec![out("x"), out("y")]))
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        let events = store.list_events(&runs[i], 0, 10).await.unwrap();
        if i % 2 == 0 {
            assert_eq!(r.unwrap().len(), 2);
            assert_eq!(events.len(), 2);
        } else {
            assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
            assert!(events.is_empty(), "the refused commit wrote nothing");
            assert_eq!(store.get_run(&runs[i]).await.unwrap().next_seq, 1);
        }
    }
    assert!(
        !store.is_poisoned(),
        "a refused commit is not a store failure"
    );
    let after = store.write_stats();
    let (txs, writes) = (
        after.transactions - before.transactions,
        after.writes - before.writes,
    );
    assert_eq!(writes, 40, "every commit went through a transaction");
    assert!(
        txs < 20,
        "40 concurrent commits were grouped into {txs} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).await.unwrap();
    let b = SqliteStore::open(dir.path()).await.unwrap();

    // A writes, B sees it at once.
    let run = a.create_run(new_run()).await.unwrap().into_run();
    let sealed = a
        .commit(&run.id, events_commit(1, vec![out("from a")]))
        .await
        .unwrap();
    assert_eq!(b.get_run(&run.id).await.unwrap().next_seq, 2);
    assert_eq!(b.list_events(&run.id, 0, 10).await.unwrap(), sealed);

    // B cancels (like `crownest cancel` in another terminal), A's driver sees the flag and
    // its next commit keeps it.
    b.request_cancel(&run.id).await.unwrap();
    assert!(a.get_run(&run.id).await.unwrap().cancel_requested);
    a.commit(&run.id, events_commit(2, vec![out("still a")]))
        .await
        .unwrap();
    assert!(b.get_run(&run.id).await.unwrap().cancel_requested);

    // Blobs put by one are visible to the other.
    let info = a
        .put_blob(stream_of(b"shared blob"), any_blob())
        .await
        .unwrap();
    assert_eq!(b.has_blob(&info.sha256).await.unwrap(), Some(11));
    assert_eq!(
        read_all(b.open_blob(&info.sha256).await.unwrap()),
        b"shared blob"
    );
    // The same bytes from B are stored once.
    b.put_blob(stream_of(b"shared blob"), any_blob())
        .await
        .unwrap();
    assert_eq!(files_under(&dir.path().join("blobs")).len(), 1);

    // Both append to the same run concurrently with the seq they believe is next: the
    // store never forks the chain; the loser gets a Conflict and retries from the store.
    let shared = a.create_run(new_run()).await.unwrap().into_run();
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        let id = shared.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            let mut conflicts = 0;
            while mine < 30 {
                let next = store.get_run(&id).await.unwrap().next_seq;
                match store
                    .commit(&id, events_commit(next, vec![out(name)]))
                    .await
                {
                    Ok(_) => mine += 1,
                    Err(Error::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = a.list_events(&shared.id, 0, 1000).await.unwrap();
    assert_eq!(events.len(), 60);
    verify_chain(&shared.id, &events).unwrap();
    assert_eq!(events.iter().filter(|e| matches!(&e.kind, crownest_core::EventKind::Stdout(c) if c.data.as_deref() == Some("a"))).count(), 30);
    let _: RunId = shared.id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_blocked_past_busy_timeout_fails_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(
        dir.path(),
        SqliteConfig::new().with_busy_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    // Another "process" holds the write lock.
    let other = rusqlite::Connection::open(dir.path().join("crownest.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.create_run(new_run()).await.unwrap_err();
    assert!(err.to_string().contains("write lock"), "{err}");
    assert!(!store.is_poisoned());
    other.execute_batch("COMMIT").unwrap();
    store.create_run(new_run()).await.unwrap();
}

/// Handles this process holds on `db` (each SQLite connection holds one).
#[cfg(target_os = "linux")]
fn db_handles(db: &std::path::Path) -> usize {
    let db = db.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == db)
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_under_a_cap_of_one_connection_all_complete_and_see_committed_data() {
    let t = TempStore::open_with(SqliteConfig::default().with_max_read_connections(1)).await;
    let store = t.store.clone();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    store
        .commit(&run.id, events_commit(1, vec![out("one"), out("two")]))
        .await
        .unwrap();
    let reads: Vec<_> = (0..32)
        .map(|_| {
            let (store, id) = (store.clone(), run.id.clone());
            tokio::spawn(async move {
                let record = store.get_run(&id).await.unwrap();
                let events = store.list_events(&id, 0, 10).await.unwrap();
                (record, events)
            })
        })
        .collect();
    for read in reads {
        let (record, events) = read.await.unwrap();
        assert_eq!(record.id, run.id);
        assert_eq!(events.len(), 2);
    }
    // The writer's connection and one reader's.
    assert_eq!(db_handles(&store.db_path()), 2);
    // The reader sees later commits.
    store
        .commit(&run.id, events_commit(3, vec![out("three")]))
        .await
        .unwrap();
    let events = store.list_events(&run.id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 3);
    verify_chain(&run.id, &events).unwrap();
    assert_eq!(db_handles(&store.db_path()), 2);
}
