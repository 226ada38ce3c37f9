//! Several real processes on one PostgreSQL store: this test runs itself again as child
//! processes (with `CROWNEST_PG_CHILD_*` set), each with its own `PostgresStore` (its own
//! pool), appending to the same run as fast as it can while the parent does too. The log
//! must come out gap-free, with every event of every writer, each writer's events in its
//! own order, and one verifiable hash chain.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crownest_core::event::verify_chain;
use crownest_core::store::Store;
use crownest_core::{Error, EventKind, RunId};
use crownest_store_postgres::{PostgresConfig, PostgresStore};

const CHILD_URL: &str = "CROWNEST_PG_CHILD_URL";
const CHILD_SCHEMA: &str = "CROWNEST_PG_CHILD_SCHEMA";
const CHILD_BLOBS: &str = "CROWNEST_PG_CHILD_BLOBS";
const CHILD_RUN: &str = "CROWNEST_PG_CHILD_RUN";
const CHILD_NAME: &str = "CROWNEST_PG_CHILD_NAME";
const CHILDREN: usize = 3;
/// Events each writer appends (in batches of 1 to 3).
const EACH: usize = 60;

/// Appends `EACH` events tagged `who:<n>`, in batches of 1..=3, each batch with the seq the
/// writer last read; on `Conflict` it re-reads `next_seq` and retries the same batch.
/// Returns how many conflicts it met.
async fn append_racing(store: &PostgresStore, id: &RunId, who: &str) -> usize {
    let mut mine = 0;
    let mut conflicts = 0;
    while mine < EACH {
        let n = (1 + mine % 3).min(EACH - mine);
        let batch = (mine..mine + n)
            .map(|k| out(&format!("{who}:{k}")))
            .collect();
        let next = store.get_run(id).await.unwrap().next_seq;
        match store.commit(id, events_commit(next, batch)).await {
            Ok(sealed) => {
                assert_eq!(
                    sealed.first().unwrap().seq,
                    next,
                    "{who}: sealed from next_seq"
                );
                mine += n;
            }
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("{who}: {}", e.chain()),
        }
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_append_to_one_run_gap_free() {
    if let Ok(name) = std::env::var(CHILD_NAME) {
        // A child's role: open the store as another process would, append, leave a blob.
        let var = |k: &str| std::env::var(k).unwrap();
        let config = PostgresConfig::new(var(CHILD_URL), var(CHILD_BLOBS))
            .with_schema(var(CHILD_SCHEMA))
            .with_pool_size(4);
        let store = PostgresStore::open(config).await.unwrap();
        let id = RunId::parse(&var(CHILD_RUN)).unwrap();
        store
            .put_blob(stream_of(name.as_bytes()), any_blob())
            .await
            .unwrap();
        let conflicts = append_racing(&store, &id, &name).await;
        println!("{name}: {conflicts} conflicts");
        return;
    }

    let Some(t) = TempStore::open().await else {
        return;
    };
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let mut children = Vec::new();
    for i in 0..CHILDREN {
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "several_processes_append_to_one_run_gap_free",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, &t.url)
            .env(CHILD_SCHEMA, &t.schema)
            .env(CHILD_BLOBS, t.blob_dir.path())
            .env(CHILD_RUN, run.id.as_str())
            .env(CHILD_NAME, format!("child{i}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
    }
    let parent_conflicts = append_racing(&t, &run.id, "parent").await;
    for (i, child) in children.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .expect("child finished")
            .unwrap();
        assert!(
            out.status.success(),
            "child{i} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let writers = CHILDREN + 1;
    let events = t.list_events(&run.id, 0, 10_000).await.unwrap();
    assert_eq!(
        events.len(),
        writers * EACH,
        "no event lost or duplicated across processes"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=(writers * EACH) as u64).collect::<Vec<_>>(),
        "gap-free seqs"
    );
    let summary = verify_chain(&run.id, &events).unwrap();
    let after = t.get_run(&run.id).await.unwrap();
    assert_eq!(after.next_seq, (writers * EACH) as u64 + 1);
    assert_eq!(after.chain_head, summary.chain_head);
    let mut names = vec!["parent".to_owned()];
    names.extend((0..CHILDREN).map(|i| format!("child{i}")));
    for who in &names {
        let mine: Vec<usize> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Stdout(c) => c.data.as_deref(),
                _ => None,
            })
            .filter_map(|d| d.strip_prefix(&format!("{who}:")))
            .map(|k| k.parse().unwrap())
            .collect();
        assert_eq!(
            mine,
            (0..EACH).collect::<Vec<_>>(),
            "{who}: every event once, in its own order"
        );
    }
    for i in 0..CHILDREN {
        let bytes = format!("child{i}");
        let sha = crownest_core::Sha256Digest::of(bytes.as_bytes());
        assert_eq!(
            read_all(t.open_blob(&sha).await.unwrap()),
            bytes.as_bytes(),
            "a child's blob is readable by the parent"
        );
    }
    println!("parent: {parent_conflicts} conflicts");
}
