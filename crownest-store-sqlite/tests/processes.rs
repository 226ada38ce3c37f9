//! Two real processes on one store directory: this test runs itself again as a child
//! process (with `CROWNEST_SQLITE_CHILD_DIR` set) that appends to the same run while the
//! parent does, through its own `SqliteStore`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crownest_core::event::verify_chain;
use crownest_core::store::Store;
use crownest_core::{Error, EventKind, RunId};
use crownest_store_sqlite::SqliteStore;

const CHILD_DIR: &str = "CROWNEST_SQLITE_CHILD_DIR";
const CHILD_RUN: &str = "CROWNEST_SQLITE_CHILD_RUN";
const EACH: usize = 40;

/// Appends `EACH` events tagged `who`, retrying from the store's `next_seq` on `Conflict`.
async fn append_racing(store: &SqliteStore, id: &RunId, who: &str) -> usize {
    let mut mine = 0;
    let mut conflicts = 0;
    while mine < EACH {
        let next = store.get_run(id).await.unwrap().next_seq;
        match store.commit(id, events_commit(next, vec![out(who)])).await {
            Ok(_) => mine += 1,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("{who}: {e}"),
        }
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_to_one_run() {
    if let (Some(dir), Some(run)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_RUN)) {
        // The child's role.
        let store = SqliteStore::open(&dir).await.unwrap();
        let id = RunId::parse(run.to_str().unwrap()).unwrap();
        let blob = store
            .put_blob(stream_of(b"from the child"), any_blob())
            .await
            .unwrap();
        append_racing(&store, &id, "child").await;
        store.request_cancel(&id).await.unwrap();
        println!("child blob {}", blob.sha256);
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let run = store.create_run(new_run()).await.unwrap().into_run();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "two_processes_append_to_one_run",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_RUN, run.id.as_str())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    append_racing(&store, &run.id, "parent").await;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let events = store.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(
        events.len(),
        2 * EACH,
        "no event lost or duplicated across processes"
    );
    verify_chain(&run.id, &events).unwrap();
    let by = |who: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::Stdout(c) if c.data.as_deref() == Some(who)))
            .count()
    };
    assert_eq!((by("parent"), by("child")), (EACH, EACH));
    let after = store.get_run(&run.id).await.unwrap();
    assert!(
        after.cancel_requested,
        "the child's cancel is visible to the parent"
    );
    assert_eq!(after.next_seq, 2 * EACH as u64 + 1);
    let sha = crownest_core::Sha256Digest::of(b"from the child");
    assert_eq!(
        read_all(store.open_blob(&sha).await.unwrap()),
        b"from the child"
    );
}
