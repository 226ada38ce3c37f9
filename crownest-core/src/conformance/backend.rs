//! Backend conformance: one function per bullet of the [`SandboxBackend`] and [`Sandbox`]
//! contracts, run through the real engine over a [`MemoryStore`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::archive::ExtractPolicy;
use crate::backend::{SandboxBackend, SandboxSpec};
use crate::engine::{EngineConfig, WorkspaceRuns};
use crate::error::{Error, RejectReason};
use crate::event::{ArtifactErrorReason, Event, EventKind, FailureKind, KillReason};
use crate::ids::RunId;
use crate::memory::MemoryStore;
use crate::run::{RunOwner, RunRecord};
use crate::spec::{Limits, Network, RunSpec};
use crate::status::RunStatus;
use crate::testing::{descriptor_of, tar_gz, tar_gz_raw_name};

/// argv builders for the behaviours the suite needs, per backend (each backend runs
/// different programs: host python, container python, WASI CPython, the fake script).
#[derive(Debug, Clone)]
pub struct Programs {
    /// Exits with the code.
    pub exit_with: fn(i32) -> Vec<String>,
    /// Prints the value of the env var, or `<unset>`, and a newline.
    pub print_env: fn(&str) -> Vec<String>,
    /// Prints the absolute working directory and a newline.
    pub print_cwd: fn() -> Vec<String>,
    /// Prints the content of a workspace file (relative path).
    pub cat: fn(&str) -> Vec<String>,
    /// Reads stdin to EOF and prints the number of bytes read (`0`).
    pub read_stdin: fn() -> Vec<String>,
    /// Prints the first arg to stdout and the second to stderr, each with a newline.
    pub stdout_stderr: fn(&str, &str) -> Vec<String>,
    /// Prints `ready` then runs until killed.
    pub run_forever: fn() -> Vec<String>,
    /// Prints `ready`, ignores SIGTERM, runs until SIGKILL. `None` when the backend has no
    /// signals (the wasm backend stops the guest directly).
    pub run_forever_ignoring_term: Option<fn() -> Vec<String>>,
    /// Writes content to a relative path.
    pub write_file: fn(&str, &str) -> Vec<String>,
    /// Creates a symlink at the second path pointing to the first.
    pub symlink: fn(&str, &str) -> Vec<String>,
}

fn py(code: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["python3".to_owned(), "-c".to_owned(), code.to_owned()];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

impl Programs {
    /// Programs for any backend with a `python3` on its PATH.
    pub fn python3() -> Self {
        Self {
            exit_with: |c| py("import sys; sys.exit(int(sys.argv[1]))", &[&c.to_string()]),
            print_env: |n| {
                py(
                    "import os, sys; print(os.environ.get(sys.argv[1], '<unset>'))",
                    &[n],
                )
            },
            print_cwd: || py("import os; print(os.getcwd())", &[]),
            cat: |p| {
                py(
                    "import sys; sys.stdout.write(open(sys.argv[1]).read())",
                    &[p],
                )
            },
            read_stdin: || py("import sys; print(len(sys.stdin.read()))", &[]),
            stdout_stderr: |o, e| {
                py(
                    "import sys; print(sys.argv[1], flush=True); print(sys.argv[2], file=sys.stderr, flush=True)",
                    &[o, e],
                )
            },
            run_forever: || {
                py(
                    "import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)",
                    &[],
                )
            },
            run_forever_ignoring_term: Some(|| {
                py(
                    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)",
                    &[],
                )
            }),
            write_file: |p, c| {
                py(
                    "import os, sys\nd = os.path.dirname(sys.argv[1])\nif d: os.makedirs(d, exist_ok=True)\nopen(sys.argv[1], 'w').write(sys.argv[2])",
                    &[p, c],
                )
            },
            symlink: |t, l| {
                py(
                    "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
                    &[t, l],
                )
            },
        }
    }

    /// Programs for the scripted [`crate::testing::FakeBackend`].
    pub fn fake() -> Self {
        fn f(steps: &[String]) -> Vec<String> {
            let mut v = vec!["fake".to_owned()];
            v.extend(steps.iter().cloned());
            v
        }
        Self {
            exit_with: |c| f(&[format!("exit:{c}")]),
            print_env: |n| f(&[format!("env:{n}")]),
            print_cwd: || f(&["cwd".into()]),
            cat: |p| f(&[format!("cat:{p}")]),
            read_stdin: || f(&["stdin".into()]),
            stdout_stderr: |o, e| f(&[format!("out:{o}"), format!("err:{e}")]),
            run_forever: || f(&["out:ready".into(), "hang".into()]),
            run_forever_ignoring_term: Some(|| {
                f(&["out:ready".into(), "ignore-term".into(), "hang".into()])
            }),
            write_file: |p, c| f(&[format!("write:{p}={c}")]),
            symlink: |t, l| f(&[format!("link:{l}={t}")]),
        }
    }
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
}

fn sample_archive() -> Bytes {
    tar_gz(&[
        ("hello.txt", b"hello from the archive\n", 0o644),
        ("sub/inner.txt", b"inner\n", 0o644),
        ("run.sh", b"#!/bin/sh\necho run\n", 0o755),
    ])
}

/// Runs `spec` on `archive` to the end; returns the final record and all events.
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
    let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
    (engine, done, events)
}

fn stdout_of(events: &[Event]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn stderr_of(events: &[Event]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stderr(c) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
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

/// `name()` is stable and non-empty; `templates()` lists `python-node`.
pub async fn name_and_templates(h: BackendHarness) {
    let name = h.backend.name().to_owned();
    assert!(!name.is_empty());
    assert_eq!(h.backend.name(), name, "stable name");
    let templates = h.backend.templates().await.unwrap();
    let t = templates
        .iter()
        .find(|t| t.name == "python-node")
        .expect("python-node is listed");
    assert!(t.available, "python-node available here: {:?}", t.reason);
    assert!(
        t.identity.as_ref().is_some_and(|i| !i.facts.is_empty()),
        "available template has an identity"
    );
}

/// `create()` of an unknown template is `InvalidSpec` (field `template`).
pub async fn unknown_template_is_invalid_spec(h: BackendHarness) {
    let err = h
        .backend
        .create(&sandbox_spec("no-such-template", me()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "template"),
        "got {err:?}"
    );
}

/// `materialize` puts the archive's files into `/workspace`.
pub async fn materialize_extracts_the_archive(h: BackendHarness) {
    let (_, done, events) = run_spec(&h, spec_of((h.programs.cat)("hello.txt"))).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events), "hello from the archive\n");
}

/// `materialize` refuses a hostile archive with `ArchiveRejected`.
pub async fn materialize_rejects_a_hostile_archive(h: BackendHarness) {
    let sandbox = h
        .backend
        .create(&sandbox_spec("python-node", me()))
        .await
        .unwrap();
    let hostile = tar_gz_raw_name("../escape.txt", b"owned");
    let err = sandbox
        .materialize(
            Box::new(std::io::Cursor::new(hostile)),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::ParentTraversal,
                ..
            }
        ),
        "got {err:?}"
    );
    sandbox.destroy().await.unwrap();
}

/// Exit codes pass through; non-zero fails with `exit_nonzero`.
pub async fn exit_codes_pass_through(h: BackendHarness) {
    for code in [0, 3, 42] {
        let (_, done, events) = run_spec(&h, spec_of((h.programs.exit_with)(code))).await;
        assert_eq!(done.exit_code, Some(code));
        let want = if code == 0 {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        assert_eq!(done.status, want);
        if code != 0 {
            assert_eq!(
                done.failure.as_ref().map(|f| f.kind),
                Some(FailureKind::ExitNonzero)
            );
        }
        match &events.last().unwrap().kind {
            EventKind::Terminal {
                exit_code, status, ..
            } => {
                assert_eq!(*exit_code, Some(code));
                assert_eq!(*status, want);
            }
            other => panic!("last event is not terminal: {other:?}"),
        }
    }
}

/// An unknown program is `spawn_failed`.
pub async fn unknown_program_is_spawn_failed(h: BackendHarness) {
    let (_, done, _) = run_spec(&h, RunSpec::new(["crownest-no-such-program-xyz"])).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::SpawnFailed),
        "{:?}",
        done.failure
    );
}

/// The command sees exactly the spec's env (plus the template's), never the host's.
pub async fn env_is_exactly_the_spec(h: BackendHarness) {
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_CONF")).with_env("CROWNEST_CONF", "value-1"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    // A plain setting is provenance: printed as it is, never masked.
    assert_eq!(stdout_of(&events).trim(), "value-1");
    // A variable of the host process (cargo sets it for tests) must not be inherited.
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        let (_, done, events) =
            run_spec(&h, spec_of((h.programs.print_env)("CARGO_MANIFEST_DIR"))).await;
        assert_eq!(done.status, RunStatus::Succeeded);
        assert_eq!(stdout_of(&events).trim(), "<unset>", "host env leaked");
    }
}

/// A secret reaches the command's environment; its echo is masked in output; the run's
/// events, record and evidence name it and never hold its value.
pub async fn secrets_reach_the_command_and_are_masked(h: BackendHarness) {
    let value = "conf-S3cret-7f1e";
    let (engine, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_SECRET"))
            .with_env("CROWNEST_PLAIN", "plain-1")
            .with_secret("CROWNEST_SECRET", value),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "***", "the echo is masked");
    assert_eq!(done.secret_names, ["CROWNEST_SECRET"]);
    let evidence = engine.evidence(&done.id).await.unwrap();
    assert_eq!(evidence.secret_names, ["CROWNEST_SECRET"]);
    assert_eq!(
        evidence.env.get("CROWNEST_PLAIN").map(String::as_str),
        Some("plain-1")
    );
    for (what, json) in [
        ("events", serde_json::to_string(&events).unwrap()),
        ("record", serde_json::to_string(&done).unwrap()),
        ("evidence", serde_json::to_string(&evidence).unwrap()),
        ("in-toto", evidence.to_in_toto().to_string()),
    ] {
        assert!(!json.contains(value), "the secret is in the {what}");
    }
    // `***` (not `<unset>`) shows the value arrived. However short, a secret is masked.
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_SECRET")).with_secret("CROWNEST_SECRET", "ab"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "***");
}

/// `cwd` is a directory inside `/workspace`.
pub async fn cwd_is_inside_the_workspace(h: BackendHarness) {
    let (_, done, events) = run_spec(&h, spec_of((h.programs.print_cwd)()).with_cwd("sub")).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let cwd = stdout_of(&events);
    assert!(cwd.trim_end().ends_with("/sub"), "cwd {cwd:?}");
    assert!(
        cwd.contains("workspace"),
        "cwd {cwd:?} is inside the workspace"
    );
}

/// stdin is closed: reading it returns EOF at once.
pub async fn stdin_is_closed(h: BackendHarness) {
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.read_stdin)()).with_timeout_ms(30_000),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "0");
}

/// stdout and stderr are streamed as their own events.
pub async fn stdout_and_stderr_are_streamed(h: BackendHarness) {
    let (_, done, events) =
        run_spec(&h, spec_of((h.programs.stdout_stderr)("to-out", "to-err"))).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events), "to-out\n");
    assert_eq!(stderr_of(&events), "to-err\n");
    let first_output = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::Stdout(_) | EventKind::Stderr(_)))
        .unwrap();
    let running = events
        .iter()
        .position(|e| {
            matches!(
                e.kind,
                EventKind::Status {
                    status: RunStatus::Running,
                    ..
                }
            )
        })
        .unwrap();
    assert!(
        running < first_output,
        "running is announced before any output"
    );
}

fn kills(events: &[Event]) -> Vec<(Option<String>, Option<String>, KillReason)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Kill {
                signal,
                action,
                reason,
            } => Some((signal.clone(), action.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// A timeout ends the command: SIGTERM first, `failed` / `timed_out`.
pub async fn timeout_ends_the_command_with_the_kill_ladder(h: BackendHarness) {
    let started = std::time::Instant::now();
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.run_forever)()).with_timeout_ms(1500),
    )
    .await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::TimedOut)
    );
    let k = kills(&events);
    assert_eq!(
        k.first().map(|k| (k.0.as_deref(), k.2)),
        Some((Some("SIGTERM"), KillReason::Timeout)),
        "{k:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "timed-out run ended promptly"
    );
}

/// A command that ignores SIGTERM still ends on SIGKILL.
pub async fn sigkill_ends_a_command_that_ignores_sigterm(h: BackendHarness) {
    let Some(prog) = h.programs.run_forever_ignoring_term else {
        return;
    };
    let mut spec = spec_of(prog()).with_timeout_ms(2000);
    spec.limits.kill_grace_ms = Some(500);
    let (_, done, events) = run_spec(&h, spec).await;
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::TimedOut)
    );
    let k = kills(&events);
    assert!(
        k.iter().any(|k| k.0.as_deref() == Some("SIGKILL")),
        "SIGKILL rung reached: {k:?}"
    );
    assert!(stdout_of(&events).contains("ready"));
}

/// Cancel while running ends the run `canceled`, after the kill ladder.
pub async fn cancel_while_running(h: BackendHarness) {
    let engine = h.engine().await;
    let run = engine
        .create(spec_of((h.programs.run_forever)()).with_backend(h.backend.name()))
        .await
        .unwrap();
    let archive = sample_archive();
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    // Wait until the command printed `ready`.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
        if stdout_of(&events).contains("ready") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "command never became ready: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.cancel(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), engine.wait(&run.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Canceled);
    let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
    assert!(kills(&events).iter().any(|k| k.2 == KillReason::Cancel));
}

/// A regular file is collected with its bytes, size and digest.
pub async fn artifact_regular_file_is_collected(h: BackendHarness) {
    let spec = spec_of((h.programs.write_file)("out/result.txt", "result-bytes"))
        .with_artifact("out/result.txt", true);
    let (engine, done, events) = run_spec(&h, spec).await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?} {:?}",
        done.failure,
        done.artifact_errors
    );
    let a = done.artifacts.first().expect("one artifact");
    assert_eq!(a.path, "out/result.txt");
    assert_eq!(a.size_bytes, 12);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut engine.store().open_blob(&a.sha256).await.unwrap(),
        &mut bytes,
    )
    .unwrap();
    assert_eq!(bytes, b"result-bytes");
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::ArtifactCollected { path, .. } if path == "out/result.txt")
    ));
    let ev = engine.evidence(&done.id).await.unwrap();
    assert_eq!(ev.artifacts.len(), 1);
    assert_eq!(ev.artifacts[0].sha256, a.sha256);
}

/// A symlink pointing outside the workspace is never followed.
pub async fn artifact_symlink_is_not_followed(h: BackendHarness) {
    let spec = spec_of((h.programs.symlink)("/etc/passwd", "leak")).with_artifact("leak", false);
    let (_, done, events) = run_spec(&h, spec).await;
    assert!(
        done.artifacts.is_empty(),
        "nothing collected through a symlink"
    );
    let err = done.artifact_errors.first().expect("an artifact error");
    assert!(
        matches!(
            err.reason,
            ArtifactErrorReason::NotRegular | ArtifactErrorReason::EscapesWorkspace
        ),
        "{err:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ArtifactError { .. }))
    );
    // A non-required artifact error does not change the outcome.
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
}

/// A missing artifact is an `artifact_error` `not_found`.
pub async fn artifact_missing_is_reported(h: BackendHarness) {
    let (_, done, _) = run_spec(
        &h,
        spec_of((h.programs.exit_with)(0)).with_artifact("nope.txt", false),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        done.artifact_errors.first().map(|e| e.reason),
        Some(ArtifactErrorReason::NotFound)
    );
}

/// A missing required artifact fails the run with `missing_required_artifact`.
pub async fn required_artifact_missing_fails_the_run(h: BackendHarness) {
    let (_, done, _) = run_spec(
        &h,
        spec_of((h.programs.exit_with)(0)).with_artifact("nope.txt", true),
    )
    .await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::MissingRequiredArtifact)
    );
}

/// `destroy()` is idempotent.
pub async fn destroy_is_idempotent(h: BackendHarness) {
    let sandbox = h
        .backend
        .create(&sandbox_spec("python-node", me()))
        .await
        .unwrap();
    sandbox.destroy().await.expect("first destroy");
    sandbox.destroy().await.expect("second destroy");
}

/// `sweep_orphans` destroys sandboxes whose owner is gone, and never one whose owner lives.
pub async fn sweep_orphans_destroys_unlisted_sandboxes(h: BackendHarness) {
    let live_spec = sandbox_spec("python-node", me());
    let orphan_spec = sandbox_spec("python-node", dead_owner());
    let live = h.backend.create(&live_spec).await.unwrap();
    let orphan = h.backend.create(&orphan_spec).await.unwrap();
    let orphan_id = orphan.id().to_owned();
    drop(orphan); // dropped without destroy, and its owner is gone: an orphan
    let swept = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(
        swept
            .iter()
            .any(|s| s.contains(&orphan_id) || orphan_id.contains(s.as_str())),
        "swept {swept:?}, orphan {orphan_id}"
    );
    assert!(
        !swept
            .iter()
            .any(|s| s.contains(live.id()) || live.id().contains(s.as_str())),
        "live sandbox was swept"
    );
    let again = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(
        !again
            .iter()
            .any(|s| s.contains(&orphan_id) || orphan_id.contains(s.as_str())),
        "swept twice: {again:?}"
    );
    live.destroy().await.unwrap();
}

/// `keepSandbox` keeps the sandbox and the evidence says so.
pub async fn keep_sandbox_is_recorded(h: BackendHarness) {
    if !h.backend.capabilities().keep_sandbox {
        return;
    }
    let (engine, done, _) = run_spec(
        &h,
        spec_of((h.programs.exit_with)(0)).with_keep_sandbox(1_000),
    )
    .await;
    let ev = engine.evidence(&done.id).await.unwrap();
    assert!(ev.sandbox.kept, "evidence records the kept sandbox");
    assert!(!ev.sandbox.destroyed);
    assert!(ev.sandbox.keep_until.is_some());
    // After the TTL the engine destroys it: a sweep with nothing live finds nothing of it.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let id = done.sandbox.as_ref().unwrap().id.clone();
    let swept = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(
        !swept
            .iter()
            .any(|s| s.contains(&id) || id.contains(s.as_str())),
        "kept sandbox destroyed after its TTL"
    );
}
