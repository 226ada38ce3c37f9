//! Crash recovery with real processes: `crownest run` drives runs with output on the process
//! backend and is killed with SIGKILL at random points, 20 times. After each kill the store
//! is reopened through the engine (which recovers) and checked: every event the CLI printed
//! (it prints only committed events) is present with the same hash, seqs have no gap, every
//! run is terminal with verifying evidence, every interrupted run ended `failed` /
//! `host_restarted`, no process of the runs survives, and no staging or sandbox directory is
//! left behind.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crownest_backend_process::{ProcessBackend, ProcessConfig};
use crownest_core::event::{Event, FailureKind, verify_chain};
use crownest_core::{RunId, RunStatus, Store, WorkspaceRuns};
use crownest_store_sqlite::SqliteStore;

const RUNS_PER_ROUND: usize = 3;
const ROUNDS: usize = 20;

struct Driver {
    child: Child,
    reader: std::thread::JoinHandle<Vec<Event>>,
}

fn spawn_driver(home: &Path, xdg: &Path, repo: &Path, token: &str) -> Driver {
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done; \
                  setsid sh -c 'sleep 300' & sleep 300";
    let mut child = Command::new(env!("CARGO_BIN_EXE_crownest"))
        .arg("--home")
        .arg(home)
        .args(["run", "--backend", "process", "--json", "--timeout", "10m"])
        .arg("--env")
        .arg(format!("CRASH_TOKEN={token}"))
        .arg(repo)
        .args(["--", "sh", "-c", script])
        .env("XDG_RUNTIME_DIR", xdg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Event>(&l).ok())
            .collect()
    });
    Driver { child, reader }
}

/// Pids whose environment holds the token (the runs' processes and their daemons).
fn token_pids(token: &str) -> Vec<u32> {
    let needle = format!("CRASH_TOKEN={token}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            // Zombies have an empty environ; a readable match is a live process.
            out.push(pid);
        }
    }
    out
}

/// Sandbox and staging directories under the process backend's root (its own bookkeeping
/// files, such as the containment probe cache, are not leftovers).
fn leftovers(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn twenty_sigkills_lose_nothing() {
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("README"), "crash test repo\n").unwrap();
    let token = format!("{:x}", rand::random::<u64>());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acknowledged: BTreeMap<(RunId, u64), String> = BTreeMap::new();

    for round in 0..ROUNDS {
        let drivers: Vec<Driver> = (0..RUNS_PER_ROUND)
            .map(|_| spawn_driver(home.path(), xdg.path(), repo.path(), &token))
            .collect();
        // A random point: from "before the run exists" to "deep into its output".
        let delay = Duration::from_millis(50 + rand::random::<u64>() % 2500);
        std::thread::sleep(delay);
        for mut d in drivers {
            d.child.kill().unwrap(); // SIGKILL
            d.child.wait().unwrap();
            for e in d.reader.join().unwrap() {
                acknowledged.insert((e.run_id.clone(), e.seq), e.hash.clone());
            }
        }

        // Reopen: the engine recovers on open.
        let xdg_root = xdg.path().join("crownest-process");
        rt.block_on(async {
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(home.path().join("store")).await.unwrap());
            let backend = ProcessBackend::new(ProcessConfig {
                root: xdg_root.clone(),
                ..ProcessConfig::default()
            })
            .unwrap();
            let engine = WorkspaceRuns::builder(store.clone())
                .backend(Arc::new(backend))
                .open()
                .await
                .unwrap();
            let runs = engine
                .list(&crownest_core::store::RunQuery {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap();
            for run in &runs {
                assert!(
                    run.status.is_terminal(),
                    "round {round}: run {} left {}",
                    run.id,
                    run.status
                );
                let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
                let mut all = events.clone();
                while all.len() as u64 + 1 < run.next_seq {
                    let more = engine
                        .list_events(&run.id, all.len() as u64, 1000)
                        .await
                        .unwrap();
                    assert!(!more.is_empty());
                    all.extend(more);
                }
                verify_chain(&run.id, &all).unwrap_or_else(|e| panic!("round {round}: {e}"));
                let evidence = engine.evidence(&run.id).await.unwrap();
                evidence.verify_events(&all).unwrap();
                // Every field of the bundle, also of a run recovery ended, is what the
                // chain says.
                let problems = crownest_core::evidence::verify(
                    &serde_json::to_value(&evidence).unwrap(),
                    &all,
                );
                assert!(problems.is_empty(), "round {round}: {problems:?}");
                if run.status == RunStatus::Failed {
                    assert_eq!(
                        run.failure.as_ref().map(|f| f.kind),
                        Some(FailureKind::HostRestarted),
                        "round {round}: {:?}",
                        run.failure
                    );
                }
                for e in &all {
                    if let Some(h) = acknowledged.get(&(e.run_id.clone(), e.seq)) {
                        assert_eq!(
                            h, &e.hash,
                            "round {round}: acknowledged event {} changed",
                            e.seq
                        );
                    }
                }
            }
            let stored: std::collections::BTreeSet<RunId> =
                runs.iter().map(|r| r.id.clone()).collect();
            for (run, seq) in acknowledged.keys() {
                assert!(
                    stored.contains(run),
                    "round {round}: acknowledged run {run} is gone"
                );
                let got = engine.list_events(run, seq - 1, 1).await.unwrap();
                assert_eq!(
                    got.first().map(|e| e.seq),
                    Some(*seq),
                    "round {round}: acknowledged event {run}#{seq} lost"
                );
            }
        });

        // No process of any run survives (the kernel may need a moment to reap).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive = token_pids(&token);
            if alive.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: processes survived: {alive:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = leftovers(&xdg.path().join("crownest-process"));
        assert!(left.is_empty(), "round {round}: left behind: {left:?}");
    }
    assert!(
        !acknowledged.is_empty(),
        "the drivers printed events before being killed"
    );
    // The kills really interrupted runs: they were reclaimed, with their output kept.
    let (runs, reclaimed) = rt.block_on(async {
        let store = SqliteStore::open(home.path().join("store")).await.unwrap();
        let runs = store
            .list_runs(&crownest_core::store::RunQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let reclaimed = runs
            .iter()
            .filter(|r| {
                r.failure
                    .as_ref()
                    .is_some_and(|f| f.kind == FailureKind::HostRestarted)
            })
            .count();
        (runs.len(), reclaimed)
    });
    eprintln!(
        "{runs} runs, {reclaimed} reclaimed, {} acknowledged events",
        acknowledged.len()
    );
    assert!(
        reclaimed >= ROUNDS,
        "only {reclaimed} of {runs} runs were interrupted"
    );
}
