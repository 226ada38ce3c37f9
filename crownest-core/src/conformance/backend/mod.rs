//! Backend conformance: one function per bullet of the [`SandboxBackend`] and [`Sandbox`]
//! contracts, run through the real engine over a [`MemoryStore`] or on a sandbox directly.
//!
//! Cases are registered by what they need ([`Need`]), as OpenDAL registers its behaviour
//! tests by capability: `backend_conformance!` stamps one test per case, and a case whose
//! need the backend does not declare (a [`Capability`] absent from its
//! [`SandboxBackend::capabilities`], or a program its [`Programs`] cannot express) is
//! reported as skipped by name on stderr; it passes only because of that absence.
//!
//! | file | cases |
//! |---|---|
//! | `run.rs` | a run end to end: archive, exit codes, spawn failures, env, secrets, cwd, stdin, output, deadlines, cancel, limits, filesystem isolation |
//! | `sandbox.rs` | one sandbox driven directly: `create`, `materialize`, `exec`, `signal`, `destroy` |
//! | `artifacts.rs` | `collect_artifact` and the engine's artifact records |
//! | `sweep.rs` | `sweep_orphans` and `keep` |
//! | `capabilities.rs` | capabilities as data: reports never claim more, hard requirements refused, what was not enforced recorded |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod artifacts;
mod capabilities;
mod programs;
mod run;
mod sandbox;
mod sweep;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use artifacts::*;
pub use capabilities::*;
pub use programs::Programs;
pub use run::*;
pub use sandbox::*;
pub use sweep::*;

use crate::archive::ExtractPolicy;
use crate::backend::{ExecSink, Sandbox, SandboxBackend, SandboxSpec};
use crate::capability::Capability;
use crate::engine::{EngineConfig, WorkspaceRuns};
use crate::event::{Event, EventKind, OutputStream};
use crate::ids::RunId;
use crate::memory::MemoryStore;
use crate::run::{RunOwner, RunRecord};
use crate::spec::{Limits, Network, RunSpec};
use crate::testing::{descriptor_of, tar_gz};

/// What a case needs from the backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The backend declares this capability.
    Capability(Capability),
    /// The harness's [`Programs`] has this optional program (a field name).
    Program(&'static str),
}

/// What a backend's conformance test provides.
#[derive(Debug, Clone)]
pub struct BackendHarness {
    /// The backend under test.
    pub backend: Arc<dyn SandboxBackend>,
    /// Its programs.
    pub programs: Programs,
}

impl BackendHarness {
    /// A harness.
    pub fn new(backend: Arc<dyn SandboxBackend>, programs: Programs) -> Self {
        Self { backend, programs }
    }

    /// Why `needs` cannot be met here (`None` when they all are).
    pub fn unmet(&self, needs: &[Need]) -> Option<String> {
        let capabilities = self.backend.capabilities();
        let unmet: Vec<String> = needs
            .iter()
            .filter_map(|need| match need {
                Need::Capability(c) if !capabilities.has(*c) => {
                    Some(format!("the backend does not declare {c}"))
                }
                Need::Program(p) if !self.programs.has(p) => {
                    Some(format!("its Programs have no `{p}`"))
                }
                _ => None,
            })
            .collect();
        (!unmet.is_empty()).then(|| unmet.join("; "))
    }

    /// Runs `case` when `needs` are met; otherwise reports it as skipped, by name, on the
    /// process's stderr (not the captured test output), and returns.
    pub async fn run_case<F, Fut>(self, case: &str, needs: &[Need], run: F)
    where
        F: FnOnce(BackendHarness) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if let Some(reason) = self.unmet(needs) {
            let line = format!(
                "SKIPPED backend conformance case `{case}` on backend `{}`: {reason}\n",
                self.backend.name()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            return;
        }
        run(self).await;
    }

    async fn engine(&self) -> WorkspaceRuns {
        let config = EngineConfig {
            heartbeat_interval: Duration::from_millis(200),
            ..EngineConfig::default()
        };
        WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
            .backend(self.backend.clone())
            .config(config)
            .without_recovery()
            .open()
            .await
            .expect("engine opens")
    }

    /// A sandbox of this process, materialized from `archive`.
    async fn sandbox_with(&self, archive: Bytes) -> Arc<dyn Sandbox> {
        let sandbox: Arc<dyn Sandbox> = Arc::from(
            self.backend
                .create(&sandbox_spec("python-node", me()))
                .await
                .expect("create"),
        );
        sandbox
            .materialize(
                crate::backend::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive))),
                &ExtractPolicy::default(),
                &|_| {},
            )
            .await
            .expect("materialize");
        sandbox
    }
}

/// Cases that call `sweep_orphans` hold this, so one case's sweep cannot destroy another
/// case's deliberately orphaned sandbox while it is being checked.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sample_archive() -> Bytes {
    tar_gz(&[
        ("hello.txt", b"hello from the archive\n", 0o644),
        ("sub/inner.txt", b"inner\n", 0o644),
        ("run.sh", b"#!/bin/sh\necho run\n", 0o755),
    ])
}

/// Runs `spec` on the sample archive to the end; returns the final record and all events.
async fn run_spec(h: &BackendHarness, spec: RunSpec) -> (WorkspaceRuns, RunRecord, Vec<Event>) {
    let engine = h.engine().await;
    let spec = spec.with_backend(h.backend.name());
    let run = engine.create(spec).await.expect("create");
    let archive = sample_archive();
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .expect("upload");
    engine.start(&run.id).await.expect("start");
    let done = tokio::time::timeout(Duration::from_secs(120), engine.wait(&run.id))
        .await
        .expect("run ends within 120 s")
        .expect("wait");
    let events = all_events(&engine, &run.id).await;
    (engine, done, events)
}

async fn all_events(engine: &WorkspaceRuns, id: &RunId) -> Vec<Event> {
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

fn stream_of(events: &[Event], stream: OutputStream) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match (&e.kind, stream) {
            (EventKind::Stdout(c), OutputStream::Stdout)
            | (EventKind::Stderr(c), OutputStream::Stderr) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn stdout_of(events: &[Event]) -> String {
    stream_of(events, OutputStream::Stdout)
}

fn stderr_of(events: &[Event]) -> String {
    stream_of(events, OutputStream::Stderr)
}

fn spec_of(argv: Vec<String>) -> RunSpec {
    RunSpec::new(argv)
}

fn sandbox_spec(template: &str, owner: RunOwner) -> SandboxSpec {
    SandboxSpec {
        run_id: RunId::new(),
        instance: "conformance".into(),
        owner,
        template: template.into(),
        limits: Limits::default(),
        network: Network::None,
    }
}

fn me() -> RunOwner {
    RunOwner::current("conformance")
}

/// An owner whose process is gone (a pid above the kernel's maximum).
fn dead_owner() -> RunOwner {
    RunOwner {
        instance: "conformance-dead".into(),
        pid: 4_194_305,
        pid_start: Some(1),
    }
}

/// A sink that records everything and checks that `started` comes first, once.
#[derive(Debug, Default)]
struct RecordingSink {
    started: AtomicUsize,
    output: std::sync::Mutex<Vec<(OutputStream, Vec<u8>)>>,
    early: AtomicUsize,
}

impl RecordingSink {
    fn text(&self, stream: OutputStream) -> String {
        let out = self.output.lock().unwrap();
        let bytes: Vec<u8> = out
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, d)| d.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[async_trait]
impl ExecSink for RecordingSink {
    async fn started(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    async fn output(&self, stream: OutputStream, data: &[u8]) {
        if self.started.load(Ordering::SeqCst) != 1 {
            self.early.fetch_add(1, Ordering::SeqCst);
        }
        self.output.lock().unwrap().push((stream, data.to_vec()));
    }
}

/// Polls `sink` until its stdout contains `needle` (panics after 60 s).
async fn wait_for_output(sink: &RecordingSink, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sink.text(OutputStream::Stdout).contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the command never printed {needle:?}: {}",
            sink.text(OutputStream::Stdout)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bytes of a collected artifact.
fn read_all(mut r: Box<dyn std::io::Read + Send>) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}
