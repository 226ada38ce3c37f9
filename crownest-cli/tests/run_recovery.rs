//! The recovery beside `crownest run` (`home::open_for_run`): it registers a backend other
//! than the process backend and the run's own only when the store holds an unfinished run
//! of it, and then that run's sandbox is swept and accounted for. Here: a `crownest run
//! --backend docker` is killed with SIGKILL while its command runs; the next `crownest run`
//! on the process backend reclaims the run, and the Docker sweep (registered because of
//! it) removes the container and says so in the run's failure. And a run's sandbox, removed
//! in the background after its terminal commit (`removalPending`), is gone when `crownest
//! run` exits: a Docker run's container, a process run's directory. The Docker tests need
//! Docker and the
//! `crownest/python-node` image: fails without them when `CROWNEST_REQUIRE_DOCKER=1`,
//! skipped (said on stderr) otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crownest_core::event::{Event, EventKind, FailureKind};
use crownest_core::{RunStatus, Store as _};
use crownest_store_sqlite::SqliteStore;

fn sample_repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

fn docker_usable() -> bool {
    let ok = Command::new("docker")
        .args(["image", "inspect", "crownest/python-node:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CROWNEST_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "CROWNEST_REQUIRE_DOCKER=1 but docker or the image is not usable"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: docker or crownest/python-node unavailable (set CROWNEST_REQUIRE_DOCKER=1 to make this a failure)\n",
        );
    }
    ok
}

fn containers_of(sandbox: &str) -> String {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=crownest.sandbox={sandbox}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_process_run_sweeps_the_docker_sandbox_of_a_crashed_docker_run() {
    if !docker_usable() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crownest"))
        .arg("--home")
        .arg(home.path())
        .args(["run", "--backend", "docker", "--json"])
        .arg(sample_repo())
        .args(["--", "sleep", "300"])
        .env_remove("CROWNEST_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The run's id once its command runs.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(e) = serde_json::from_str::<Event>(&line)
                && matches!(
                    e.kind,
                    EventKind::Status {
                        status: RunStatus::Running,
                        ..
                    }
                )
            {
                let _ = tx.send(e.run_id);
                return;
            }
        }
    });
    let id = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("the docker run reaches running");
    child.kill().unwrap(); // SIGKILL: nothing of the CLI cleans up
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let read = |id| {
        rt.block_on(async {
            let store = SqliteStore::open(home.path().join("store")).await.unwrap();
            let r = store.get_run(id).await.unwrap();
            store.close().await;
            r
        })
    };
    let before = read(&id);
    assert_eq!(before.status, RunStatus::Running);
    let sandbox = before.sandbox.clone().expect("a sandbox was made").id;
    assert!(!containers_of(&sandbox).is_empty(), "the crash left it");

    // A run on the process backend: its recovery registers docker for the unfinished run.
    let out = Command::new(env!("CARGO_BIN_EXE_crownest"))
        .arg("--home")
        .arg(home.path())
        .args(["run", "--backend", "process"])
        .arg(sample_repo())
        .args(["--", "true"])
        .env_remove("CROWNEST_HOME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let after = read(&id);
    assert_eq!(after.status, RunStatus::Failed);
    let failure = after.failure.unwrap();
    assert_eq!(failure.kind, FailureKind::HostRestarted);
    assert!(
        failure.message.contains("destroyed by the docker sweep"),
        "{}",
        failure.message
    );
    assert!(after.sandbox.unwrap().destroyed);
    assert_eq!(containers_of(&sandbox), "", "swept");
}

/// `crownest --home HOME run --backend BACKEND --json SOURCE -- true` (with
/// `XDG_RUNTIME_DIR` when given), which must succeed: its run id.
fn run_true(
    home: &Path,
    backend: &str,
    source: &Path,
    runtime_dir: Option<&Path>,
) -> crownest_core::RunId {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crownest"));
    cmd.arg("--home")
        .arg(home)
        .args(["run", "--backend", backend, "--json"])
        .arg(source)
        .args(["--", "true"])
        .env_remove("CROWNEST_HOME");
    if let Some(dir) = runtime_dir {
        cmd.env("XDG_RUNTIME_DIR", dir);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str::<Event>(l).ok())
        .expect("events on stdout")
        .run_id
}

#[test]
fn a_docker_run_removes_its_container_before_the_command_exits() {
    if !docker_usable() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let id = run_true(home.path(), "docker", &sample_repo(), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = rt.block_on(async {
        let store = SqliteStore::open(home.path().join("store")).await.unwrap();
        store.get_run(&id).await.unwrap()
    });
    assert_eq!(run.status, RunStatus::Succeeded);
    let sandbox = run.sandbox.unwrap();
    // Removed after the terminal commit (so the evidence says it was pending), and before
    // `crownest run` exited.
    assert!(sandbox.destroyed && sandbox.removal_pending, "{sandbox:?}");
    assert_eq!(containers_of(&sandbox.id), "", "left behind");
}

#[test]
fn a_process_runs_directory_is_deleted_beside_the_terminal_commit_and_gone_at_exit() {
    let home = tempfile::tempdir().unwrap();
    let runtime_dir = tempfile::tempdir().unwrap();
    // A workspace of some size, so its deletion is still running at the terminal commit.
    let repo = tempfile::tempdir().unwrap();
    for d in 0..20 {
        let dir = repo.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(dir.join(format!("f{f}.txt")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let id = run_true(
        home.path(),
        "process",
        repo.path(),
        Some(runtime_dir.path()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (run, evidence) = rt.block_on(async {
        let store = SqliteStore::open(home.path().join("store")).await.unwrap();
        (
            store.get_run(&id).await.unwrap(),
            store.get_evidence(&id).await.unwrap(),
        )
    });
    assert_eq!(run.status, RunStatus::Succeeded);
    let sandbox = run.sandbox.unwrap();
    assert!(sandbox.destroyed && sandbox.removal_pending, "{sandbox:?}");
    assert!(
        evidence.sandbox.destroyed && evidence.sandbox.removal_pending,
        "{:?}",
        evidence.sandbox
    );
    // Nothing of it is left once `crownest run` exited: no directory, no tombstone.
    let root = runtime_dir.path().join("crownest/process");
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(id.as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        root.display()
    );
}
