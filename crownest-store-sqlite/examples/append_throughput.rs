//! Appends 256 MiB of `stdout` events (64 KiB chunks, as the engine emits them) through
//! `Store::commit` and prints how fast they are persisted (every commit is acknowledged only
//! once its transaction is fsynced).
//!
//! ```text
//! cargo run --release -p crownest-store-sqlite --example append_throughput [-- DIR [MiB]]
//! ```
//!
//! Three shapes of load:
//! * `1 event/commit`: one run, each 64 KiB chunk its own commit (the worst case: a
//!   command that writes slowly enough that nothing coalesces);
//! * `16 events/commit`: one run, the engine's driver coalescing queued output (it takes up
//!   to 256 queued events per commit);
//! * `4 runs x 1 event/commit`: four runs at once, one chunk per commit, so the writer's
//!   group commit shares fsyncs between them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use crownest_core::event::{EventKind, NewEvent, OutputChunk};
use crownest_core::run::RunOwner;
use crownest_core::store::{RunCommit, Store};
use crownest_core::{Limits, RunId, RunRecord, RunSpec};
use crownest_store_sqlite::SqliteStore;

const CHUNK: usize = 64 * 1024;

/// 64 KiB of typical output: printable lines.
fn chunk_text(n: usize) -> String {
    let mut s = String::with_capacity(CHUNK);
    let mut line = 0;
    while s.len() < CHUNK {
        s.push_str(&format!(
            "[{n:06}:{line:04}] test_module::case_{line} ... ok, 0.00{line}s elapsed\n"
        ));
        line += 1;
    }
    s.truncate(CHUNK);
    s
}

fn chunk_event(offset: u64, text: &str) -> NewEvent {
    NewEvent::now(EventKind::Stdout(OutputChunk {
        offset,
        data: Some(text.to_owned()),
        data_base64: None,
    }))
}

async fn new_run(store: &SqliteStore) -> RunId {
    let run = RunRecord::new(
        RunId::new(),
        RunSpec::new(["bench"]),
        "process".into(),
        Limits::default(),
        RunOwner::current("bench"),
    );
    store.create_run(run).await.unwrap().into_run().id
}

/// Appends `chunks` chunks to one run, `per_commit` events per commit, with the record
/// carried along as the engine does.
async fn append(
    store: Arc<SqliteStore>,
    id: RunId,
    chunks: usize,
    per_commit: usize,
    texts: Arc<Vec<String>>,
) {
    let mut record = store.get_run(&id).await.unwrap();
    let mut offset = 0u64;
    let mut done = 0;
    while done < chunks {
        let n = per_commit.min(chunks - done);
        let events = (0..n)
            .map(|i| {
                let text = &texts[(done + i) % texts.len()];
                let e = chunk_event(offset, text);
                offset += text.len() as u64;
                e
            })
            .collect();
        let sealed = store
            .commit(
                &id,
                RunCommit {
                    expected_next_seq: record.next_seq,
                    events,
                    record: Some(record.clone()),
                    evidence: None,
                },
            )
            .await
            .unwrap();
        let last = sealed.last().unwrap();
        record.next_seq = last.seq + 1;
        record.chain_head.clone_from(&last.hash);
        done += n;
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from);
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let total_chunks = mib * 1024 * 1024 / CHUNK;
    let texts = Arc::new((0..64).map(chunk_text).collect::<Vec<_>>());

    println!("appending {mib} MiB of stdout events ({total_chunks} chunks of 64 KiB) per scenario");
    for (name, runs, per_commit) in [
        ("1 event/commit", 1, 1),
        ("16 events/commit", 1, 16),
        ("4 runs x 1 event/commit", 4, 1),
    ] {
        let tmp = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let store = Arc::new(SqliteStore::open(tmp.path()).await.unwrap());
        let mut ids = Vec::new();
        for _ in 0..runs {
            ids.push(new_run(&store).await);
        }
        let before = store.write_stats();
        let started = Instant::now();
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                tokio::spawn(append(
                    store.clone(),
                    id,
                    total_chunks / runs,
                    per_commit,
                    texts.clone(),
                ))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let stats = store.write_stats();
        let bytes = (total_chunks * CHUNK) as f64;
        let db = std::fs::metadata(tmp.path().join("crownest.db"))
            .map(|m| m.len())
            .unwrap_or(0)
            + std::fs::metadata(tmp.path().join("crownest.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        println!(
            "{name:>26}: {:7.1} MB/s  ({:.2} s, {} commits in {} transactions, db+wal {} MiB)",
            bytes / secs / 1e6,
            secs,
            stats.writes - before.writes,
            stats.transactions - before.transactions,
            db / (1024 * 1024),
        );
        store.close().await;
    }
}
