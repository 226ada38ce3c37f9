//! Several engines on one PostgreSQL store (`docs/scale-out.md`): leases, the shared
//! queue, a subscriber on one engine following a run another engine drives, and the
//! `kill -9` of an engine process.
//!
//! The multi-process cases re-run this test binary as engine processes (with
//! `CROWNEST_PG_ENGINE_*` set): each opens its own `PostgresStore` (its own pool) and its own
//! `WorkspaceRuns` on the process backend, with a work root of its own, sharing only the
//! database and the blob directory, as separate hosts would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use crownest_core::event::{EventKind, FailureKind};
use crownest_core::store::Store;
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{EngineConfig, RunRecord, RunSpec, RunStatus, WorkspaceRuns};
use crownest_store_postgres::{PostgresConfig, PostgresStore};
use futures::StreamExt as _;

const ROLE: &str = "CROWNEST_PG_ENGINE_ROLE";
const URL: &str = "CROWNEST_PG_ENGINE_URL";
const SCHEMA: &str = "CROWNEST_PG_ENGINE_SCHEMA";
const BLOBS: &str = "CROWNEST_PG_ENGINE_BLOBS";
const WORK: &str = "CROWNEST_PG_ENGINE_WORK";

fn config(lease_ttl: Duration, slots: usize) -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(500),
        cancel_poll_interval: Duration::from_millis(50),
        subscribe_poll_interval: Duration::from_millis(50),
        claim_poll_interval: Duration::from_millis(100),
        max_concurrent_runs: slots,
        lease_ttl,
        ..EngineConfig::default()
    }
}

fn archive() -> Bytes {
    tar_gz(&[("main.sh", b"echo hello from $0\n", 0o644)])
}

async fn submit(engine: &WorkspaceRuns, argv: &[&str], archive: &Bytes) -> RunRecord {
    let run = engine
        .create(RunSpec::new(argv.iter().copied()))
        .await
        .unwrap();
    engine
        .upload_archive(&run.id, &descriptor_of(archive), archive.clone())
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap()
}

async fn wait(engine: &WorkspaceRuns, id: &crownest_core::RunId) -> RunRecord {
    tokio::time::timeout(Duration::from_secs(300), engine.wait(id))
        .await
        .expect("the run ended")
        .unwrap()
}

/// How often a run was started in a sandbox (`starting`, and the sandbox's `environment`):
/// a run executed twice would show both twice.
fn times_started(events: &[crownest_core::Event]) -> usize {
    let starting = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Status {
                    status: RunStatus::Starting,
                    ..
                }
            )
        })
        .count();
    let sandboxes = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Environment { .. }))
        .count();
    assert_eq!(
        starting,
        sandboxes,
        "one sandbox per start: {:?}",
        events
            .iter()
            .filter(|e| matches!(
                e.kind,
                EventKind::Environment { .. } | EventKind::Error { .. }
            ))
            .map(|e| format!("{:?}", e.kind))
            .collect::<Vec<_>>()
    );
    starting
}

/// This process's role when it was started as an engine process; `true` when it was
/// (the caller then returns).
async fn child_role() -> bool {
    let Ok(role) = std::env::var(ROLE) else {
        return false;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let store = PostgresStore::open(
        PostgresConfig::new(var(URL), var(BLOBS))
            .with_schema(var(SCHEMA))
            .with_pool_size(4),
    )
    .await
    .unwrap();
    let work = std::path::PathBuf::from(var(WORK));
    match role.as_str() {
        // Serves the queue until its stdin closes.
        "engine" => {
            let engine = engine_on(store, &work, config(Duration::from_secs(6), 4)).await;
            println!("ENGINE-READY {}", engine.instance());
            tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
            })
            .await
            .unwrap();
            // Let what it drives end before leaving.
            while engine.metrics().runs_active > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Starts a long run, says which, and waits to be killed.
        "doomed" => {
            let engine = engine_on(store, &work, config(Duration::from_secs(2), 2)).await;
            let run = submit(&engine, &["sleep", "600"], &archive()).await;
            loop {
                if engine.get(&run.id).await.unwrap().status == RunStatus::Running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!("ENGINE-RUNNING {} {}", run.id, engine.instance());
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        other => panic!("unknown role {other}"),
    }
    true
}

/// Starts this test binary as an engine process with `role`; returns it and the first line
/// it printed (after the libtest noise).
fn spawn_engine(
    test: &str,
    role: &str,
    t: &TempStore,
    work: &std::path::Path,
) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(URL, &t.url)
        .env(SCHEMA, &t.schema)
        .env(BLOBS, t.blob_dir.path())
        .env(WORK, work)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("the engine process said something")
            .unwrap();
        // libtest may print its own words before it on the same line.
        if let Some(at) = line.find("ENGINE-") {
            break line[at..].to_owned();
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, line)
}

/// Two engines of one slot each on `t`'s database, each with a store instance (a pool) and
/// a work root of its own, as two hosts; the work roots live as long as the third value.
async fn two_engines(t: &TempStore) -> (WorkspaceRuns, WorkspaceRuns, [tempfile::TempDir; 2]) {
    let work = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = engine_on(
        t.reopen().await,
        work[0].path(),
        config(Duration::from_secs(6), 1),
    )
    .await;
    let b = engine_on(
        t.reopen().await,
        work[1].path(),
        config(Duration::from_secs(6), 1),
    )
    .await;
    (a, b, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_on_a_busy_engine_is_claimed_by_another() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let (a, b, _work) = two_engines(&t).await;
    let x = archive();
    let first = submit(&a, &["sleep", "2"], &x).await;
    assert_eq!(first.status, RunStatus::Starting, "A had a free slot");
    let second = submit(&a, &["sh", "main.sh"], &x).await;
    assert_eq!(
        second.status,
        RunStatus::Queued,
        "A is busy: queued for any engine"
    );
    assert!(second.owner.is_none(), "owned by nobody while queued");
    let done = wait(&a, &second.id).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(
        done.owner.as_ref().map(|o| o.instance.as_str()),
        Some(b.instance()),
        "B, the engine with a free slot, claimed and drove it"
    );
    assert_eq!(wait(&b, &first.id).await.status, RunStatus::Succeeded);
    // A cancel of a run waiting in the queue ends it from any engine, and nobody runs it.
    // (Both slots free first: a driver gives its slot back just after the terminal commit.)
    for engine in [&a, &b] {
        while engine.metrics().runs_active > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let busy = submit(&a, &["sleep", "2"], &x).await;
    assert_eq!(busy.status, RunStatus::Starting);
    let busy_b = submit(&b, &["sleep", "2"], &x).await;
    assert_eq!(busy_b.status, RunStatus::Starting);
    let waiting = submit(&a, &["sh", "main.sh"], &x).await;
    assert_eq!(waiting.status, RunStatus::Queued, "both slots are busy");
    let canceled = b.cancel(&waiting.id).await.unwrap();
    let ended = wait(&a, &canceled.id).await;
    assert_eq!(ended.status, RunStatus::Canceled);
    let events = a.list_events(&ended.id, 0, 1000).await.unwrap();
    assert_eq!(times_started(&events), 0);
    a.evidence(&ended.id)
        .await
        .unwrap()
        .verify_events(&events)
        .unwrap();
    wait(&a, &busy.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engine_processes_share_300_runs_each_run_once() {
    const TEST: &str = "three_engine_processes_share_300_runs_each_run_once";
    if child_role().await {
        return;
    }
    let Some(t) = TempStore::open().await else {
        return;
    };
    let works: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut children = Vec::new();
    for w in &works[1..] {
        children.push(spawn_engine(TEST, "engine", &t, w.path()));
    }
    let a = engine_on(
        t.reopen().await,
        works[0].path(),
        config(Duration::from_secs(6), 4),
    )
    .await;
    let x = archive();
    let started = Instant::now();
    let mut ids = Vec::new();
    // Each run takes a little while, so A's four slots fill and the rest wait in the queue.
    for _ in 0..300 {
        ids.push(
            submit(&a, &["sh", "-c", "sleep 0.5; sh main.sh"], &x)
                .await
                .id,
        );
    }
    let mut per_engine: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let done = wait(&a, id).await;
        assert_eq!(
            done.status,
            RunStatus::Succeeded,
            "{id}: {:?}",
            done.failure
        );
        let events = a.list_events(id, 0, 10_000).await.unwrap();
        assert_eq!(
            times_started(&events),
            1,
            "{id} ran exactly once: {:?}",
            events
                .iter()
                .map(|e| format!("{:?}", e.kind))
                .collect::<Vec<_>>()
        );
        a.evidence(id)
            .await
            .unwrap()
            .verify_events(&events)
            .unwrap();
        *per_engine.entry(done.owner.unwrap().instance).or_default() += 1;
    }
    let elapsed = started.elapsed();
    println!("300 runs over 3 engine processes in {elapsed:?}: {per_engine:?}");
    assert_eq!(per_engine.values().sum::<usize>(), 300);
    assert_eq!(
        per_engine.len(),
        3,
        "every engine executed runs: {per_engine:?}"
    );
    let instances: Vec<String> = children
        .iter()
        .map(|(_, line)| line.trim_start_matches("ENGINE-READY ").to_owned())
        .collect();
    for i in &instances {
        assert!(per_engine.contains_key(i), "{i} took part: {per_engine:?}");
    }
    assert!(t.list_unfinished().await.unwrap().is_empty());
    for (mut child, _) in children {
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "an engine process failed: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engines_runs_fail_within_its_lease_and_never_run_twice() {
    const TEST: &str = "a_killed_engines_runs_fail_within_its_lease_and_never_run_twice";
    if child_role().await {
        return;
    }
    let Some(t) = TempStore::open().await else {
        return;
    };
    let (wa, wb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let survivor = engine_on(
        t.reopen().await,
        wa.path(),
        config(Duration::from_secs(2), 2),
    )
    .await;
    let (mut doomed, line) = spawn_engine(TEST, "doomed", &t, wb.path());
    let mut words = line.split_whitespace().skip(1);
    let id = crownest_core::RunId::parse(words.next().unwrap()).unwrap();
    let lost = words.next().unwrap().to_owned();
    // kill -9: no clean shutdown, no last commit.
    let killed = Instant::now();
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    // Its lease (2 s) expires; the survivor's reclaim pass (every 2/3 s) fails the run.
    let deadline = Duration::from_secs(2 + 5);
    let done = tokio::time::timeout(deadline, survivor.wait(&id))
        .await
        .expect("the run became terminal within lease + 5 s")
        .unwrap();
    println!("terminal {:?} after the kill", killed.elapsed());
    assert_eq!(done.status, RunStatus::Failed);
    let failure = done.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::HostRestarted);
    assert!(failure.message.contains(&lost), "{}", failure.message);
    assert!(failure.message.contains("lease"), "{}", failure.message);
    let events = survivor.list_events(&id, 0, 1000).await.unwrap();
    assert_eq!(times_started(&events), 1, "never run a second time");
    survivor
        .evidence(&id)
        .await
        .unwrap()
        .verify_events(&events)
        .unwrap();
    // Another engine opening now changes nothing: finalized exactly once.
    let late = engine_on(
        t.reopen().await,
        wa.path(),
        config(Duration::from_secs(2), 2),
    )
    .await;
    let report = late.recover().await.unwrap();
    assert!(report.reclaimed.is_empty(), "{report:?}");
    assert_eq!(
        late.list_events(&id, 0, 1000).await.unwrap().len(),
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_engine_follows_a_run_another_drives() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let (a, b, _work) = two_engines(&t).await;
    let x = archive();
    // B drives it (started there); A's subscriber follows from the first event.
    let script = "for i in $(seq 1 40); do echo line $i; sleep 0.02; done";
    let run = submit(&b, &["sh", "-c", script], &x).await;
    let mut stream = a.subscribe(&run.id, 0);
    let mut seqs = Vec::new();
    let mut stdout = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("events keep coming")
    {
        let e = e.unwrap();
        seqs.push(e.seq);
        if let EventKind::Stdout(c) = &e.kind {
            stdout.extend(c.bytes());
        }
        if matches!(e.kind, EventKind::Terminal { .. }) {
            break;
        }
    }
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "gap-free, no duplicate");
    let want: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(stdout).unwrap(), want);
    let done = b.get(&run.id).await.unwrap();
    assert_eq!(done.owner.unwrap().instance, b.instance());
}
