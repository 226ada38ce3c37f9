//! Appends 256 MiB of `stdout` events (64 KiB chunks, as the engine emits them) through
//! `Store::commit` and prints how fast they are persisted (every commit is acknowledged only
//! once its transaction is fsynced).
//!
//! ```text
//! cargo run --release -p crownest-store-sqlite --example append_throughput [-- DIR [MiB]]
//! ```
//!
//! Three shapes of load:
//! * `engine`: one run, fed exactly as the engine's driver is: the output sink sends one
//!   event per 64 KiB read into a channel of 16, and the driver commits whatever is queued
//!   (up to 256 events) in one commit. This is the number that matters.
//! * `1 event/commit`: one run, each chunk its own commit (the worst case: output arriving
//!   just slowly enough that nothing coalesces, yet fast enough to saturate the store).
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

/// The engine's driver: a producer sends one event per 64 KiB into a channel of 16; the
/// consumer commits everything queued (up to 256 events) at once.
async fn append_like_engine(
    store: Arc<SqliteStore>,
    id: RunId,
    chunks: usize,
    texts: Arc<Vec<String>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewEvent>>(16);
    let producer = tokio::spawn(async move {
        let mut offset = 0u64;
        for i in 0..chunks {
            let text = &texts[i % texts.len()];
            let e = chunk_event(offset, text);
            offset += text.len() as u64;
            tx.send(vec![e]).await.unwrap();
        }
    });
    let mut record = store.get_run(&id).await.unwrap();
    while let Some(mut events) = rx.recv().await {
        while events.len() < 256 {
            match rx.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        let sealed = store
            .commit(
                &id,
                RunCommit {
                    expected_next_seq: record.next_seq,
                    events,
                    record: Some(record.clone()),
                    evidence: None,
                    envelope: None,
                },
            )
            .await
            .unwrap();
        let last = sealed.last().unwrap();
        record.next_seq = last.seq + 1;
        record.chain_head.clone_from(&last.hash);
    }
    producer.await.unwrap();
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
                    envelope: None,
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

/// The disk's own pace for the same shape: 64 KiB appended and fsynced, 512 times.
fn fsync_baseline(dir: &std::path::Path) -> f64 {
    use std::io::Write as _;
    let tmp = tempfile::NamedTempFile::new_in(dir).unwrap();
    let mut f = tmp.as_file();
    let buf = vec![b'x'; CHUNK];
    let started = Instant::now();
    for _ in 0..512 {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    (512 * CHUNK) as f64 / started.elapsed().as_secs_f64() / 1e6
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from);
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let total_chunks = mib * 1024 * 1024 / CHUNK;
    let texts = Arc::new((0..64).map(chunk_text).collect::<Vec<_>>());

    let where_ = base.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "disk baseline (64 KiB appended to a growing file + fdatasync, no database): {:.1} MB/s",
        fsync_baseline(&where_)
    );
    println!("appending {mib} MiB of stdout events ({total_chunks} chunks of 64 KiB) per scenario");
    for (name, runs, per_commit) in [
        ("engine", 1, 0),
        ("1 event/commit", 1, 1),
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
                let (store, texts, n) = (store.clone(), texts.clone(), total_chunks / runs);
                if per_commit == 0 {
                    tokio::spawn(append_like_engine(store, id, n, texts))
                } else {
                    tokio::spawn(append(store, id, n, per_commit, texts))
                }
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let stats = store.write_stats();
        let bytes = (total_chunks * CHUNK) as f64;
        let size = |name: &str| {
            std::fs::metadata(tmp.path().join(name)).map_or(0, |m| m.len()) / (1024 * 1024)
        };
        println!(
            "{name:>26}: {:7.1} MB/s  ({:.2} s, {} commits in {} transactions, db {} MiB, wal {} MiB)",
            bytes / secs / 1e6,
            secs,
            stats.writes - before.writes,
            stats.transactions - before.transactions,
            size("crownest.db"),
            size("crownest.db-wal"),
        );
        store.close().await;
    }
}
