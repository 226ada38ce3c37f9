//! Shared helpers of the engine-level tests: a real engine over a MemoryStore with the
//! process backend, and `/proc` checks for leftover processes.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use crownest_backend_process::{Containment, ProcessBackend, ProcessConfig};
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{
    EngineConfig, Event, EventKind, MemoryStore, RunRecord, RunSpec, WorkspaceRuns,
};

pub fn root() -> std::path::PathBuf {
    std::env::temp_dir().join("crownest-process-engine-tests")
}

pub fn backend(containment: Containment) -> Arc<ProcessBackend> {
    Arc::new(
        ProcessBackend::new(ProcessConfig::with_root(root()).containment(containment)).unwrap(),
    )
}

/// The backend with a forced containment. Root-only containments are refused with a typed
/// error when the tests run unprivileged (then `None`); as root they must work.
pub fn forced_backend(containment: Containment) -> Option<Arc<ProcessBackend>> {
    match ProcessBackend::new(ProcessConfig::with_root(root()).containment(containment)) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) if !rustix::process::geteuid().is_root() => {
            assert!(e.chain().contains("does not work here"), "{}", e.chain());
            eprintln!("{containment:?} refused unprivileged: {}", e.chain());
            None
        }
        Err(e) => panic!("{containment:?} must work as root: {}", e.chain()),
    }
}

pub async fn engine(backend: Arc<ProcessBackend>) -> WorkspaceRuns {
    let config = EngineConfig {
        heartbeat_interval: Duration::from_millis(500),
        ..EngineConfig::default()
    };
    WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(backend)
        .config(config)
        .without_recovery()
        .open()
        .await
        .unwrap()
}

pub fn archive() -> bytes::Bytes {
    tar_gz(&[
        ("hello.txt", b"hello\n", 0o644),
        ("sub/inner.txt", b"inner\n", 0o644),
    ])
}

/// Creates, uploads and starts a run; returns its id.
pub async fn start(engine: &WorkspaceRuns, spec: RunSpec) -> crownest_core::RunId {
    let run = engine.create(spec).await.unwrap();
    let archive = archive();
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    run.id
}

/// All events of a run (paged).
pub async fn events(engine: &WorkspaceRuns, id: &crownest_core::RunId) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.seq);
        let page = engine.list_events(id, after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Runs `spec` to the end on `backend`.
pub async fn run(
    backend: Arc<ProcessBackend>,
    spec: RunSpec,
) -> (WorkspaceRuns, RunRecord, Vec<Event>) {
    let engine = engine(backend).await;
    let id = start(&engine, spec).await;
    let done = tokio::time::timeout(Duration::from_secs(120), engine.wait(&id))
        .await
        .expect("run ends within 120 s")
        .unwrap();
    let events = events(&engine, &id).await;
    (engine, done, events)
}

pub fn stream_bytes(events: &[Event], stdout: bool) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match (&e.kind, stdout) {
            (EventKind::Stdout(c), true) | (EventKind::Stderr(c), false) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub fn stdout(events: &[Event]) -> String {
    String::from_utf8_lossy(&stream_bytes(events, true)).into_owned()
}

/// Host processes whose command line contains `needle` (as a whole argument).
pub fn processes_with_arg(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// A unique `sleep` duration (seconds) that marks this test's processes in `/proc`.
pub fn unique_sleep() -> String {
    format!("{}", 500_000 + rand_u32() % 400_000)
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

pub fn kill_all(pids: &[i32]) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
}
