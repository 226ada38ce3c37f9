//! The engine's own logic, on the scripted FakeBackend and MemoryStore.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;

use crownest_core::event::{
    ArtifactErrorReason, Event, EventKind, FailureKind, KillReason, verify_chain,
};
use crownest_core::run::{RunOwner, RunRecord};
use crownest_core::store::{RunCommit, Store};
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz, tar_gz_raw_name};
use crownest_core::{
    EngineConfig, Error, Input, MemoryStore, NewEvent, RejectReason, RunId, RunSpec, RunStatus,
    WorkspaceRuns, transition,
};

struct Env {
    engine: WorkspaceRuns,
    fake: FakeBackend,
    store: Arc<MemoryStore>,
}

async fn env_with(config: EngineConfig) -> Env {
    let store = Arc::new(MemoryStore::new());
    let fake = FakeBackend::new();
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(fake.clone()))
        .config(config)
        .open()
        .await
        .unwrap();
    Env {
        engine,
        fake,
        store,
    }
}

fn fast() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(50),
        cancel_poll_interval: Duration::from_millis(20),
        subscribe_poll_interval: Duration::from_millis(20),
        kill_confirm_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    }
}

async fn env() -> Env {
    env_with(fast()).await
}

fn archive() -> Bytes {
    tar_gz(&[
        ("main.py", b"print('hi')\n", 0o644),
        ("data/input.txt", b"42\n", 0o644),
    ])
}

fn fake(steps: &[&str]) -> RunSpec {
    let mut argv = vec!["fake".to_owned()];
    argv.extend(steps.iter().map(|s| (*s).to_owned()));
    RunSpec::new(argv)
}

impl Env {
    async fn ready(&self, spec: RunSpec) -> RunRecord {
        let run = self.engine.create(spec).await.unwrap();
        let a = archive();
        self.engine
            .upload_archive(&run.id, &descriptor_of(&a), a)
            .await
            .unwrap()
    }

    async fn run(&self, spec: RunSpec) -> (RunRecord, Vec<Event>) {
        let run = self.ready(spec).await;
        self.engine.start(&run.id).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(30), self.engine.wait(&run.id))
            .await
            .unwrap()
            .unwrap();
        let events = self.engine.list_events(&run.id, 0, 1000).await.unwrap();
        (done, events)
    }

    async fn wait_status(&self, id: &RunId, status: RunStatus) {
        for _ in 0..500 {
            if self.engine.get(id).await.unwrap().status == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run never reached {status}");
    }
}

/// The statuses of a run that succeeds, in order.
const EVERY_STATE_TO_SUCCESS: [RunStatus; 7] = [
    RunStatus::AwaitingArchive,
    RunStatus::ArchiveReady,
    RunStatus::Queued,
    RunStatus::Starting,
    RunStatus::Running,
    RunStatus::Finalizing,
    RunStatus::Succeeded,
];

fn statuses(events: &[Event]) -> Vec<RunStatus> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Status { status, .. } => Some(status),
            _ => None,
        })
        .collect()
}

fn failure(r: &RunRecord) -> Option<FailureKind> {
    r.failure.as_ref().map(|f| f.kind)
}

/// Every `status` event is an edge of the transition table (some `Input` takes its
/// `previous` to its `status`) and names the status the chain was in: the behaviour half of
/// `tests/status_gate.rs`.
fn assert_statuses_follow_the_table(events: &[Event]) {
    let mut current: Option<RunStatus> = None;
    for e in events {
        if let EventKind::Status { status, previous } = e.kind {
            assert_eq!(previous, current, "seq {}: previous status", e.seq);
            if let Some(from) = previous {
                assert!(
                    Input::ALL
                        .iter()
                        .any(|&i| transition(from, i).ok() == Some(status)),
                    "seq {}: {from} -> {status} is not an edge of the table",
                    e.seq
                );
            }
            current = Some(status);
        }
    }
}

/// Every run: one terminal event, last; a verifying chain; evidence naming it; statuses
/// that follow the table.
async fn assert_well_formed(e: &Env, run: &RunRecord, events: &[Event]) {
    assert_statuses_follow_the_table(events);
    let terminals = events.iter().filter(|e| e.kind.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal event");
    assert!(
        events.last().unwrap().kind.is_terminal(),
        "terminal is last"
    );
    verify_chain(&run.id, events).unwrap();
    let evidence = e.engine.evidence(&run.id).await.unwrap();
    evidence.verify_events(events).unwrap();
    // Evidence v2: every field is what the chain says, and the terminal event binds it.
    assert!(evidence.is_v2(), "new runs write evidence v2");
    let problems =
        crownest_core::evidence::verify(&serde_json::to_value(&evidence).unwrap(), events);
    assert!(problems.is_empty(), "evidence v2 verifies: {problems:?}");
    assert_eq!(evidence.status, run.status);
    assert!(
        e.fake.live_sandboxes().is_empty() || run.spec.keep_sandbox.is_some(),
        "sandbox destroyed"
    );
}

#[tokio::test]
async fn a_run_succeeds_through_every_state() {
    let e = env().await;
    let (done, events) = e
        .run(
            fake(&["out:hello", "err:oops", "write:out/r.txt=result", "exit:0"])
                .with_artifact("out/r.txt", true),
        )
        .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(statuses(&events), EVERY_STATE_TO_SUCCESS);
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::Stdout(c) if c.data.as_deref() == Some("hello\n"))
        )
    );
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::Stderr(c) if c.data.as_deref() == Some("oops\n"))
        )
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ArchiveProgress { .. }))
    );
    assert_eq!(done.artifacts.len(), 1);
    let evidence = e.engine.evidence(&done.id).await.unwrap();
    assert_eq!(evidence.artifacts[0].sha256, done.artifacts[0].sha256);
    assert_eq!(
        evidence.source.sha256,
        Some(descriptor_of(&archive()).sha256)
    );
    assert!(
        evidence.timestamps.command_started.is_some() && evidence.timestamps.terminal.is_some()
    );
    assert_well_formed(&e, &done, &events).await;
}

#[tokio::test]
async fn non_zero_exit_fails() {
    let e = env().await;
    let (done, events) = e.run(fake(&["exit:7"])).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(failure(&done), Some(FailureKind::ExitNonzero));
    assert_well_formed(&e, &done, &events).await;
}

fn kill_rungs(events: &[Event]) -> Vec<(Option<String>, Option<String>, KillReason)> {
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

#[tokio::test]
async fn timeout_climbs_the_kill_ladder_as_far_as_needed() {
    let e = env().await;
    let grace = |spec: RunSpec| {
        let mut s = spec.with_timeout_ms(100);
        s.limits.kill_grace_ms = Some(100);
        s
    };
    // Ends on SIGTERM.
    let (done, events) = e.run(grace(fake(&["hang"]))).await;
    assert_eq!(failure(&done), Some(FailureKind::TimedOut));
    assert_eq!(
        kill_rungs(&events),
        vec![(Some("SIGTERM".into()), None, KillReason::Timeout)]
    );
    assert_well_formed(&e, &done, &events).await;
    // Ignores SIGTERM: SIGKILL.
    let (done, events) = e.run(grace(fake(&["ignore-term", "hang"]))).await;
    assert_eq!(failure(&done), Some(FailureKind::TimedOut));
    assert_eq!(kill_rungs(&events).len(), 2);
    assert_eq!(kill_rungs(&events)[1].0.as_deref(), Some("SIGKILL"));
    // Ignores everything: the sandbox is destroyed.
    let (done, events) = e.run(grace(fake(&["stuck", "hang"]))).await;
    assert_eq!(failure(&done), Some(FailureKind::TimedOut));
    let rungs = kill_rungs(&events);
    assert_eq!(rungs.len(), 3, "{rungs:?}");
    assert_eq!(rungs[2].1.as_deref(), Some("destroy"));
    // The command never ended: it has no exit status, and none is made up.
    assert_eq!((done.exit_code, done.signal), (None, None));
    assert_well_formed(&e, &done, &events).await;
}

#[tokio::test]
async fn cancel_in_every_non_terminal_state() {
    let mut config = fast();
    config.max_concurrent_runs = 1;
    let e = env_with(config).await;

    // awaiting_archive
    let r = e.engine.create(fake(&["exit:0"])).await.unwrap();
    assert_eq!(
        e.engine.cancel(&r.id).await.unwrap().status,
        RunStatus::Canceled
    );
    // archive_ready
    let r = e.ready(fake(&["exit:0"])).await;
    assert_eq!(
        e.engine.cancel(&r.id).await.unwrap().status,
        RunStatus::Canceled
    );
    // running (it also holds the only slot)
    let running = e.ready(fake(&["hang"])).await;
    e.engine.start(&running.id).await.unwrap();
    e.wait_status(&running.id, RunStatus::Running).await;
    // queued behind it
    let queued = e.ready(fake(&["exit:0"])).await;
    e.engine.start(&queued.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        e.engine.get(&queued.id).await.unwrap().status,
        RunStatus::Queued
    );
    e.engine.cancel(&queued.id).await.unwrap();
    let q = e.engine.wait(&queued.id).await.unwrap();
    assert_eq!(q.status, RunStatus::Canceled);
    e.engine.cancel(&running.id).await.unwrap();
    let r = e.engine.wait(&running.id).await.unwrap();
    assert_eq!(r.status, RunStatus::Canceled);
    let events = e.engine.list_events(&running.id, 0, 1000).await.unwrap();
    assert!(
        kill_rungs(&events)
            .iter()
            .all(|k| k.2 == KillReason::Cancel)
    );
    assert_well_formed(&e, &r, &events).await;
    // starting
    e.fake.materialize_delay(Duration::from_millis(300));
    let starting = e.ready(fake(&["out:never", "exit:0"])).await;
    e.engine.start(&starting.id).await.unwrap();
    e.wait_status(&starting.id, RunStatus::Starting).await;
    e.engine.cancel(&starting.id).await.unwrap();
    let s = e.engine.wait(&starting.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Canceled);
    let events = e.engine.list_events(&starting.id, 0, 1000).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Stdout(_))),
        "the command never ran"
    );
    assert_well_formed(&e, &s, &events).await;
    // terminal: refused
    assert!(matches!(
        e.engine.cancel(&starting.id).await,
        Err(Error::InvalidTransition { .. })
    ));
}

#[tokio::test]
async fn sandbox_errors_fail_the_run() {
    let e = env().await;
    e.fake.fail_create(true);
    let (done, events) = e.run(fake(&["exit:0"])).await;
    assert_eq!(failure(&done), Some(FailureKind::SandboxError));
    assert_well_formed(&e, &done, &events).await;
    e.fake.fail_create(false);
    let (done, _) = e.run(fake(&["crash"])).await;
    assert_eq!(failure(&done), Some(FailureKind::SandboxError));
    let (done, _) = e.run(fake(&["oom"])).await;
    assert_eq!(failure(&done), Some(FailureKind::LimitExceeded));
    let (done, _) = e.run(RunSpec::new(["no-such-program"])).await;
    assert_eq!(failure(&done), Some(FailureKind::SpawnFailed));
}

#[tokio::test]
async fn destroy_failure_is_reported_not_hidden() {
    let e = env().await;
    e.fake.fail_destroy(true);
    let (done, events) = e.run(fake(&["exit:0"])).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Error { code, .. } if code == "cleanup_failed"))
    );
    let ev = e.engine.evidence(&done.id).await.unwrap();
    assert!(
        !ev.sandbox.destroyed,
        "evidence does not claim a destroy that failed"
    );
}

#[tokio::test]
async fn required_artifact_missing_fails_and_optional_does_not() {
    let e = env().await;
    let (done, events) = e
        .run(fake(&["exit:0"]).with_artifact("missing.txt", false))
        .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::ArtifactError {
            reason: ArtifactErrorReason::NotFound,
            ..
        }
    )));
    let (done, events) = e
        .run(fake(&["exit:0"]).with_artifact("missing.txt", true))
        .await;
    assert_eq!(failure(&done), Some(FailureKind::MissingRequiredArtifact));
    assert_well_formed(&e, &done, &events).await;
    // A symlink is never followed, and too large is refused before reading.
    let (done, _) = e
        .run(
            fake(&["link:leak=/etc/passwd", "write:big=0123456789"])
                .with_artifact("leak", false)
                .with_artifact("big", false)
                .with_limits(crownest_core::LimitOverrides {
                    artifact_bytes_each: Some(5),
                    ..Default::default()
                }),
        )
        .await;
    let reasons: Vec<_> = done.artifact_errors.iter().map(|a| a.reason).collect();
    assert_eq!(
        reasons,
        vec![
            ArtifactErrorReason::EscapesWorkspace,
            ArtifactErrorReason::TooLarge
        ]
    );
}

#[tokio::test]
async fn output_over_the_cap_is_truncated_once_per_stream() {
    let e = env().await;
    let spec = fake(&["outbytes:300000", "err:e"]).with_limits(crownest_core::LimitOverrides {
        output_bytes_per_stream: Some(100_000),
        ..Default::default()
    });
    let (done, events) = e.run(spec).await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "truncation does not fail the run"
    );
    let stored: u64 = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.len()),
            _ => None,
        })
        .sum();
    assert_eq!(stored, 100_000);
    let truncated: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::OutputTruncated {
                stream,
                bytes_dropped,
            } => Some((*stream, *bytes_dropped)),
            _ => None,
        })
        .collect();
    assert_eq!(
        truncated,
        vec![(crownest_core::OutputStream::Stdout, 200_000)]
    );
}

/// The stdout of a run's events, as text.
fn stdout(events: &[Event]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Every string in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out)
        }),
        _ => {}
    }
}

/// True when `doc` lets an offline dictionary confirm `value`: it holds `sha256(value)`, or
/// `sha256(s ‖ name ‖ 0 ‖ value)` next to the string `s` (a published salt).
fn confirms_by_hash(doc: &serde_json::Value, name: &str, value: &str) -> bool {
    use sha2::{Digest as _, Sha256};
    let mut all = Vec::new();
    strings(doc, &mut all);
    let mut candidates = vec![hex::encode(Sha256::digest(value.as_bytes()))];
    for salt in &all {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(name.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        candidates.push(hex::encode(h.finalize()));
    }
    all.iter().any(|s| candidates.contains(s))
}

#[tokio::test]
async fn secrets_never_reach_events_evidence_or_record_not_even_hashed() {
    let e = env().await;
    let pin = "493817";
    let (done, events) = e
        .run(
            fake(&["env:PIN", "env:CI", "exit:0"])
                .with_secret("PIN", pin)
                .with_env("CI", "true"),
        )
        .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        stdout(&events),
        "***\ntrue\n",
        "the secret's echo is masked, CI's is not"
    );
    let evidence = e.engine.evidence(&done.id).await.unwrap();
    let docs = [
        ("events", serde_json::to_value(&events).unwrap()),
        ("evidence", serde_json::to_value(&evidence).unwrap()),
        ("in-toto", evidence.to_in_toto()),
        ("record", serde_json::to_value(&done).unwrap()),
        (
            "stored record",
            serde_json::to_value(e.store.get_run(&done.id).await.unwrap()).unwrap(),
        ),
    ];
    for (what, doc) in &docs {
        let text = doc.to_string();
        assert!(!text.contains(pin), "the secret is in the {what}");
        assert!(
            !confirms_by_hash(doc, "PIN", pin),
            "the {what} lets a dictionary confirm the secret"
        );
    }
    assert_eq!(done.secret_names, ["PIN"]);
    assert!(done.spec.secrets.is_empty());
    assert_eq!(evidence.secret_names, ["PIN"]);
    assert_eq!(evidence.schema, crownest_core::evidence::EVIDENCE_SCHEMA);
    assert_eq!(evidence.env_salt, None);
    assert_eq!(evidence.schema_problem(), None);
    let statement = evidence.to_in_toto();
    let params = &statement["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(params["secretNames"], serde_json::json!(["PIN"]));
    assert_eq!(params["env"], serde_json::json!({"CI": "true"}));
}

#[tokio::test]
async fn plain_env_is_provenance_and_never_masked() {
    let e = env().await;
    let (done, events) = e
        .run(
            fake(&["env:CI", "out:passed=true", "env:PYTHONPATH", "exit:0"])
                .with_env("CI", "true")
                .with_env("PYTHONPATH", "_vendor"),
        )
        .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(stdout(&events), "true\npassed=true\n_vendor\n");
    let evidence = serde_json::to_value(e.engine.evidence(&done.id).await.unwrap()).unwrap();
    assert_eq!(
        evidence["env"],
        serde_json::json!({"CI": "true", "PYTHONPATH": "_vendor"}),
        "names and values are recorded"
    );
    assert_eq!(done.spec.env["PYTHONPATH"], "_vendor");
}

#[tokio::test]
async fn secrets_live_only_in_the_engine_that_created_the_run() {
    let e = env().await;
    let run = e
        .ready(fake(&["env:TOKEN", "exit:0"]).with_secret("TOKEN", "tok-1"))
        .await;
    // Another engine over the same store: the values were never stored, so it cannot start
    // the run (and says why, without the value).
    let other = WorkspaceRuns::builder(e.store.clone())
        .backend(Arc::new(FakeBackend::new()))
        .without_recovery()
        .open()
        .await
        .unwrap();
    match other.start(&run.id).await {
        Err(Error::InvalidSpec { field, message }) => {
            assert_eq!(field, "secrets");
            assert!(!message.contains("tok-1"));
        }
        other => panic!("expected InvalidSpec(secrets), got {other:?}"),
    }
    assert_eq!(
        e.engine.get(&run.id).await.unwrap().status,
        RunStatus::ArchiveReady
    );
    // The creating engine still can.
    e.engine.start(&run.id).await.unwrap();
    let done = e.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
}

#[test]
fn secret_specs_are_validated_without_echoing_values() {
    let (d, m) = (
        crownest_core::Limits::default(),
        crownest_core::Limits::default_maxima(),
    );
    let refused = |spec: RunSpec| match spec.validate(&d, &m) {
        Err(Error::InvalidSpec { field, message }) => {
            assert_eq!(field, "secrets");
            assert!(!message.contains("v4lue"), "{message}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    };
    refused(RunSpec::new(["true"]).with_secret("A-B", "v4lue"));
    refused(RunSpec::new(["true"]).with_secret("1A", "v4lue"));
    refused(
        RunSpec::new(["true"])
            .with_env("TOKEN", "x")
            .with_secret("TOKEN", "v4lue"),
    );
    refused(RunSpec::new(["true"]).with_secret("T", "v4lue\0"));
    refused(RunSpec::new(["true"]).with_secret("T", "v4lue".repeat(20_000)));
    assert!(
        RunSpec::new(["true"])
            .with_secret("API_TOKEN", "v4lue")
            .validate(&d, &m)
            .is_ok()
    );
}

#[test]
fn a_spec_serializes_without_secrets_except_as_a_request_body() {
    let spec = RunSpec::new(["true"])
        .with_env("CI", "true")
        .with_secret("TOKEN", "v4lue");
    let stored = serde_json::to_string(&spec).unwrap();
    assert!(
        !stored.contains("v4lue") && !stored.contains("secrets"),
        "{stored}"
    );
    assert!(!format!("{spec:?}").contains("v4lue"), "Debug redacts");
    let body = spec.to_request_json();
    assert_eq!(body["secrets"], serde_json::json!({"TOKEN": "v4lue"}));
    assert_eq!(body["env"], serde_json::json!({"CI": "true"}));
    let back: RunSpec = serde_json::from_value(body).unwrap();
    assert_eq!(back, spec, "the server reads the body back whole");
}

#[tokio::test]
async fn heartbeats_while_running() {
    let e = env().await;
    let (_, events) = e.run(fake(&["sleep:400", "exit:0"])).await;
    let n = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Heartbeat {}))
        .count();
    assert!(n >= 3, "{n} heartbeats in 400 ms at 50 ms");
}

#[tokio::test]
async fn concurrency_limit_queues_excess_runs() {
    let mut config = fast();
    config.max_concurrent_runs = 2;
    let e = env_with(config).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = e.ready(fake(&["sleep:200", "exit:0"])).await;
        e.engine.start(&r.id).await.unwrap();
        ids.push(r.id);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut running = 0;
    let mut queued = 0;
    for id in &ids {
        match e.engine.get(id).await.unwrap().status {
            RunStatus::Running | RunStatus::Starting => running += 1,
            RunStatus::Queued => queued += 1,
            _ => {}
        }
    }
    assert_eq!((running, queued), (2, 2));
    for id in &ids {
        assert_eq!(
            e.engine.wait(id).await.unwrap().status,
            RunStatus::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_runs() {
    let mut config = fast();
    config.max_concurrent_runs = 100;
    let e = Arc::new(env_with(config).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let code = i % 3;
            let (done, events) = e
                .run(fake(&[
                    &format!("out:run {i}"),
                    "sleep:20",
                    &format!("exit:{code}"),
                ]))
                .await;
            assert_eq!(done.exit_code, Some(code));
            verify_chain(&done.id, &events).unwrap();
            done.status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == RunStatus::Succeeded {
            ok += 1;
        }
    }
    assert_eq!(ok, 34);
    assert!(e.fake.live_sandboxes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_event_once_in_order() {
    let e = env().await;
    let run = e
        .ready(fake(&[
            "out:a",
            "sleep:100",
            "out:b",
            "sleep:100",
            "out:c",
            "exit:0",
        ]))
        .await;
    // One subscriber from the start, attached before start.
    let early = e.engine.subscribe(&run.id, 0);
    e.engine.start(&run.id).await.unwrap();
    // One that drops after 3 events and resumes with afterSeq.
    let mut first = e.engine.subscribe(&run.id, 0);
    let mut resumed: Vec<Event> = Vec::new();
    for _ in 0..3 {
        resumed.push(first.next().await.unwrap().unwrap());
    }
    drop(first);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rest: Vec<Event> = e
        .engine
        .subscribe(&run.id, resumed.last().unwrap().seq)
        .map(|r| r.unwrap())
        .collect()
        .await;
    resumed.extend(rest);
    let early: Vec<Event> = early.map(|r| r.unwrap()).collect().await;
    // One that attaches after the end.
    let late: Vec<Event> = e
        .engine
        .subscribe(&run.id, 0)
        .map(|r| r.unwrap())
        .collect()
        .await;
    let stored = e.engine.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(early, stored);
    assert_eq!(resumed, stored);
    assert_eq!(late, stored);
    assert!(stored.last().unwrap().kind.is_terminal());
}

/// A stream resumed at or past the end of a finished run ends at once (a browser resumes
/// every closed stream with `Last-Event-ID` = the terminal seq); one just before the end
/// yields `terminal` and ends. Also through a second engine on the same store (the run
/// ended in "another process": no in-process notification will ever come).
#[tokio::test]
async fn a_stream_resumed_at_the_end_of_a_finished_run_ends_at_once() {
    let e = env().await;
    let (run, events) = e.run(fake(&["out:a", "exit:0"])).await;
    let last = events.last().unwrap().seq;
    let other = WorkspaceRuns::builder(e.store.clone())
        .backend(Arc::new(FakeBackend::new()))
        .config(fast())
        .without_recovery()
        .open()
        .await
        .unwrap();
    for engine in [&e.engine, &other] {
        for after in [last, last + 1, last + 1000] {
            let got: Vec<Event> = tokio::time::timeout(
                Duration::from_secs(10),
                engine
                    .subscribe(&run.id, after)
                    .map(|r| r.unwrap())
                    .collect(),
            )
            .await
            .unwrap_or_else(|_| panic!("the stream after seq {after} of an ended run never ended"));
            assert!(got.is_empty(), "after {after}: {got:?}");
        }
        let tail: Vec<Event> = tokio::time::timeout(
            Duration::from_secs(10),
            engine
                .subscribe(&run.id, last - 1)
                .map(|r| r.unwrap())
                .collect(),
        )
        .await
        .unwrap();
        assert_eq!(tail, events[events.len() - 1..]);
    }
    // An unknown run is an error, not a stream that waits for ever.
    let unknown = RunId::new();
    let got: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        e.engine.subscribe(&unknown, 0).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(
        matches!(got.as_slice(), [Err(Error::NotFound { .. })]),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_is_readable_exactly_when_terminal_is_visible() {
    let e = env().await;
    let run = e.ready(fake(&["sleep:100", "exit:0"])).await;
    assert!(matches!(
        e.engine.evidence(&run.id).await,
        Err(Error::NotTerminal { .. })
    ));
    e.engine.start(&run.id).await.unwrap();
    // Sample both sides as the run ends: evidence readable ⇔ terminal event visible.
    let mut seen_terminal = false;
    for _ in 0..2000 {
        // Evidence first: if it is readable, the terminal event must already be visible.
        let evidence = e.engine.evidence(&run.id).await;
        let events = e.engine.list_events(&run.id, 0, 1000).await.unwrap();
        let terminal_visible = events.last().is_some_and(|ev| ev.kind.is_terminal());
        if let Ok(bundle) = &evidence {
            assert!(
                terminal_visible,
                "evidence readable before the terminal event"
            );
            assert_eq!(&bundle.terminal_event, events.last().unwrap());
        }
        // Terminal first: once it is visible, the evidence must be readable.
        if terminal_visible {
            let bundle = e
                .engine
                .evidence(&run.id)
                .await
                .expect("evidence readable once terminal is visible");
            assert_eq!(&bundle.terminal_event, events.last().unwrap());
            seen_terminal = true;
            break;
        }
        assert!(
            matches!(evidence, Err(Error::NotTerminal { .. })),
            "{evidence:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(seen_terminal);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_run_for_the_same_request_only() {
    let e = env().await;
    let spec = fake(&["exit:0"])
        .with_env("CI", "true")
        .with_secret("TOKEN", "v1")
        .with_idempotency_key("k1");
    let a = e.engine.create(spec.clone()).await.unwrap();
    let b = e.engine.create(spec.clone()).await.unwrap();
    assert_eq!(a.id, b.id, "a retry of the same request gets the same run");
    // Secret values are never stored nor hashed: a retry differing only in them is the
    // same request as far as the engine can tell.
    let c = e
        .engine
        .create(spec.clone().with_secret("TOKEN", "v2"))
        .await
        .unwrap();
    assert_eq!(a.id, c.id);
    for other in [
        fake(&["exit:1"]).with_idempotency_key("k1"),
        spec.clone().with_env("CI", "false"),
        spec.clone().with_label("commit", "abc"),
        spec.clone().with_secret("OTHER", "x"),
    ] {
        let err = e.engine.create(other).await.unwrap_err();
        match &err {
            Error::IdempotencyKeyReused { key, run_id } => {
                assert_eq!(key, "k1");
                assert_eq!(*run_id, a.id.to_string());
            }
            other => panic!("expected IdempotencyKeyReused, got {other:?}"),
        }
        assert_eq!(err.code(), "idempotency_key_reused");
    }
    let runs = e
        .engine
        .list(&crownest_core::store::RunQuery::default())
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "nothing else was stored");
}

/// A template the backend does not offer is refused at create (nothing stored), not found
/// out at start as a `spawn_failed` run.
#[tokio::test]
async fn an_unknown_template_is_refused_at_create() {
    let e = env().await;
    let err = e
        .engine
        .create(fake(&["exit:0"]).with_template("python-nodee"))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidSpec { field, message } => {
            assert_eq!(field, "template");
            assert!(message.contains("python-nodee"), "{message}");
            assert!(
                message.contains("\"python-node\""),
                "names what exists: {message}"
            );
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    let runs = e
        .engine
        .list(&crownest_core::store::RunQuery::default())
        .await
        .unwrap();
    assert!(runs.is_empty(), "{runs:?}");
    // The known one still works.
    e.engine.create(fake(&["exit:0"])).await.unwrap();
}

#[tokio::test]
async fn rejected_uploads_leave_the_run_awaiting_its_archive() {
    let e = env().await;
    let run = e.engine.create(fake(&["exit:0"])).await.unwrap();
    let a = archive();
    // Wrong digest.
    let mut wrong = descriptor_of(&a);
    wrong.sha256 = crownest_core::Sha256Digest::of(b"other");
    let err = e
        .engine
        .upload_archive(&run.id, &wrong, a.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::DigestMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    // Wrong size.
    let mut wrong = descriptor_of(&a);
    wrong.size_bytes += 1;
    let err = e
        .engine
        .upload_archive(&run.id, &wrong, a.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::SizeMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    // Hostile archive.
    let hostile = tar_gz_raw_name("../../etc/evil", b"x");
    let err = e
        .engine
        .upload_archive(&run.id, &descriptor_of(&hostile), hostile.clone())
        .await
        .unwrap_err();
    match &err {
        Error::ArchiveRejected { reason, entry, .. } => {
            assert_eq!(*reason, RejectReason::ParentTraversal);
            assert_eq!(entry.as_deref(), Some("../../etc/evil"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.engine.get(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    assert!(
        e.store.has_blob(&wrong.sha256).await.unwrap().is_none(),
        "mismatched bytes not kept"
    );
    let events = e.engine.list_events(&run.id, 0, 100).await.unwrap();
    let errors = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Error { code, .. } if code == "archive_rejected"))
        .count();
    assert_eq!(errors, 3);
    // Too large for a direct upload.
    let mut config = fast();
    config.direct_upload_max_bytes = 10;
    let small = env_with(config).await;
    let r = small.engine.create(fake(&["exit:0"])).await.unwrap();
    assert!(matches!(
        small
            .engine
            .upload_archive(&r.id, &descriptor_of(&a), a.clone())
            .await,
        Err(Error::LimitExceeded { .. })
    ));
    // A retry with the right bytes succeeds, and a second upload is refused.
    let ready = e
        .engine
        .upload_archive(&run.id, &descriptor_of(&a), a.clone())
        .await
        .unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert!(matches!(
        e.engine
            .upload_archive(&run.id, &descriptor_of(&a), a)
            .await,
        Err(Error::InvalidTransition { .. })
    ));
}

#[tokio::test]
async fn staged_transfer_out_of_order_and_resumed() {
    let mut config = fast();
    config.chunk_size_bytes = 64;
    let e = env_with(config).await;
    let run = e
        .engine
        .create(fake(&["cat:data/input.txt", "exit:0"]))
        .await
        .unwrap();
    let a = archive();
    let t = e
        .engine
        .begin_transfer(&run.id, &descriptor_of(&a))
        .await
        .unwrap();
    let n = a.len().div_ceil(64);
    let chunk = |i: usize| a.slice(i * 64..((i + 1) * 64).min(a.len()));
    for i in (0..n).rev().step_by(2) {
        e.engine
            .put_chunk(&t.transfer_id, (i * 64) as u64, chunk(i))
            .await
            .unwrap();
    }
    let status = e.engine.transfer_status(&t.transfer_id).await.unwrap();
    assert!(!status.complete);
    assert!(!status.missing.is_empty());
    match e.engine.complete_transfer(&t.transfer_id).await {
        Err(Error::TransferIncomplete {
            transfer_id,
            missing,
        }) => {
            assert_eq!(transfer_id, t.transfer_id.to_string());
            assert_eq!(missing, status.missing, "the missing ranges, typed");
        }
        other => panic!("incomplete transfer must be refused: {other:?}"),
    }
    // A chunk whose bytes do not have its declared sha256 is refused and not stored; other
    // bytes for a chunk already received conflict.
    let wrong = crownest_core::Sha256Digest::of(b"not this chunk");
    let missing_index = (0..n).find(|i| (n - 1 - i) % 2 == 1).unwrap();
    let err = e
        .engine
        .put_chunk_checked(
            &t.transfer_id,
            (missing_index * 64) as u64,
            chunk(missing_index),
            Some(&wrong),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChunkRejected {
                reason: crownest_core::ChunkRejectReason::DigestMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        e.engine.transfer_status(&t.transfer_id).await.unwrap(),
        status,
        "nothing stored"
    );
    let mut flipped = chunk(n - 1).to_vec();
    flipped[0] ^= 0xff;
    let err = e
        .engine
        .put_chunk(&t.transfer_id, ((n - 1) * 64) as u64, flipped.into())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChunkRejected {
                reason: crownest_core::ChunkRejectReason::Conflict,
                ..
            }
        ),
        "{err:?}"
    );
    // A bad offset or length is refused.
    assert!(
        e.engine
            .put_chunk(&t.transfer_id, 1, chunk(0))
            .await
            .is_err()
    );
    for i in 0..n {
        e.engine
            .put_chunk(&t.transfer_id, (i * 64) as u64, chunk(i))
            .await
            .unwrap();
    }
    let ready = e.engine.complete_transfer(&t.transfer_id).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert_eq!(
        ready.archive.as_ref().unwrap().upload,
        crownest_core::UploadKind::Staged
    );
    e.engine.start(&run.id).await.unwrap();
    let done = e.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    // The same archive is already stored: a new run attaches it by digest.
    let again = e.engine.create(fake(&["exit:0"])).await.unwrap();
    assert_eq!(
        e.engine
            .has_archive(&descriptor_of(&a).sha256)
            .await
            .unwrap(),
        Some(a.len() as u64)
    );
    let attached = e
        .engine
        .attach_archive(&again.id, &descriptor_of(&a))
        .await
        .unwrap();
    assert_eq!(
        attached.archive.unwrap().upload,
        crownest_core::UploadKind::Existing
    );
}

#[tokio::test]
async fn keep_sandbox_until_its_ttl() {
    let e = env().await;
    let (done, _) = e.run(fake(&["exit:0"]).with_keep_sandbox(300)).await;
    let ev = e.engine.evidence(&done.id).await.unwrap();
    assert!(ev.sandbox.kept && !ev.sandbox.destroyed);
    assert_eq!(e.fake.live_sandboxes().len(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        e.fake.live_sandboxes().is_empty(),
        "destroyed after the TTL"
    );
}

#[tokio::test]
async fn recovery_fails_runs_of_dead_owners_and_leaves_live_ones() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dead = RunOwner {
        instance: "gone".into(),
        pid: 4_194_305,
        pid_start: Some(1),
    };
    let mut orphan = RunRecord::new(
        RunId::new(),
        fake(&["hang"]),
        "fake".into(),
        Default::default(),
        dead,
    );
    let mut live = RunRecord::new(
        RunId::new(),
        fake(&["hang"]),
        "fake".into(),
        Default::default(),
        RunOwner::current("other-live-engine"),
    );
    for r in [&mut orphan, &mut live] {
        store.create_run(r.clone()).await.unwrap();
        r.status = RunStatus::Running;
        store
            .commit(
                &r.id,
                RunCommit {
                    expected_next_seq: 1,
                    events: vec![NewEvent::now(EventKind::Heartbeat {})],
                    record: Some(r.clone()),
                    evidence: None,
                    envelope: None,
                },
            )
            .await
            .unwrap();
    }
    let fake_backend = FakeBackend::new();
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(fake_backend))
        .without_recovery()
        .open()
        .await
        .unwrap();
    let report = engine.recover().await.unwrap();
    assert_eq!(report.reclaimed, vec![orphan.id.clone()]);
    assert_eq!(report.live_elsewhere, vec![live.id.clone()]);
    let o = engine.get(&orphan.id).await.unwrap();
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(failure(&o), Some(FailureKind::HostRestarted));
    let events = engine.list_events(&orphan.id, 0, 100).await.unwrap();
    engine
        .evidence(&orphan.id)
        .await
        .unwrap()
        .verify_events(&events)
        .unwrap();
    assert_eq!(
        engine.get(&live.id).await.unwrap().status,
        RunStatus::Running
    );
    // Recovery is idempotent.
    assert!(engine.recover().await.unwrap().reclaimed.is_empty());
}

fn stream_of(bytes: Bytes) -> crownest_core::store::ByteStream {
    futures::stream::once(async move { Ok(bytes) }).boxed()
}

/// The events of `run` from `archive_verified` up to its `starting` status.
fn archive_ready_to_starting(events: &[Event]) -> &[Event] {
    let from = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::ArchiveVerified { .. }))
        .unwrap();
    let to = events
        .iter()
        .position(|e| {
            matches!(
                e.kind,
                EventKind::Status {
                    status: RunStatus::Starting,
                    ..
                }
            )
        })
        .unwrap();
    &events[from..=to]
}

/// Commits of a whole run of `spec` on a fresh engine: through `receive_archive` then
/// `start`, or through `receive_archive_and_start`.
async fn commits_of_a_run(spec: RunSpec, together: bool) -> u64 {
    // No heartbeat: the count must not depend on how long the command takes.
    let e = env_with(EngineConfig {
        heartbeat_interval: Duration::from_secs(3600),
        ..fast()
    })
    .await;
    let run = e.engine.create(spec).await.unwrap();
    let a = archive();
    let (n, data) = (a.len() as u64, stream_of(a));
    if together {
        e.engine
            .receive_archive_and_start(&run.id, None, n, data)
            .await
            .unwrap();
    } else {
        e.engine
            .receive_archive(&run.id, None, n, data)
            .await
            .unwrap();
        e.engine.start(&run.id).await.unwrap();
    }
    let done = e.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    e.store.commit_calls()
}

#[tokio::test]
async fn an_upload_that_starts_the_run_commits_ready_and_start_together() {
    let spec = fake(&["out:hi", "exit:0"]);
    let apart = commits_of_a_run(spec.clone(), false).await;
    let together = commits_of_a_run(spec, true).await;
    assert_eq!(
        together + 1,
        apart,
        "one commit fewer ({together} against {apart})"
    );

    let e = env().await;
    let run = e
        .engine
        .create(fake(&["env:TOKEN", "exit:0"]).with_secret("TOKEN", "tok-1"))
        .await
        .unwrap();
    let a = archive();
    let started = e
        .engine
        .receive_archive_and_start(&run.id, None, a.len() as u64, stream_of(a.clone()))
        .await
        .unwrap();
    assert_eq!(started.status, RunStatus::Starting);
    let done = e.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let events = e.engine.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(statuses(&events), EVERY_STATE_TO_SUCCESS);
    // Consecutive numbers, nothing between; one instant (they are one commit).
    let step = archive_ready_to_starting(&events);
    assert_eq!(step.len(), 4, "{step:?}");
    assert!(step.iter().all(|ev| ev.at == step[0].at), "{step:?}");
    assert!(step.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(
        done.archive.as_ref().unwrap().sha256,
        descriptor_of(&a).sha256
    );
    assert_well_formed(&e, &done, &events).await;
}

#[tokio::test]
async fn with_no_slot_free_an_upload_that_starts_queues_the_run() {
    let e = env_with(EngineConfig {
        max_concurrent_runs: 1,
        ..fast()
    })
    .await;
    let first = e.ready(fake(&["sleep:300", "exit:0"])).await;
    e.engine.start(&first.id).await.unwrap();
    e.wait_status(&first.id, RunStatus::Running).await;
    let second = e.engine.create(fake(&["exit:0"])).await.unwrap();
    let a = archive();
    let queued = e
        .engine
        .receive_archive_and_start(&second.id, Some(&descriptor_of(&a)), 0, stream_of(a))
        .await
        .unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    let done = e.engine.wait(&second.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        e.engine.wait(&first.id).await.unwrap().status,
        RunStatus::Succeeded
    );
    let events = e.engine.list_events(&second.id, 0, 1000).await.unwrap();
    assert_statuses_follow_the_table(&events);
}

#[tokio::test]
async fn a_refused_archive_uploaded_to_start_starts_nothing() {
    let e = env().await;
    let run = e.engine.create(fake(&["exit:0"])).await.unwrap();
    let hostile = tar_gz_raw_name("../../etc/evil", b"x");
    let err = e
        .engine
        .receive_archive_and_start(&run.id, None, hostile.len() as u64, stream_of(hostile))
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
        "{err:?}"
    );
    let record = e.engine.get(&run.id).await.unwrap();
    assert_eq!(record.status, RunStatus::AwaitingArchive);
    let events = e.engine.list_events(&run.id, 0, 100).await.unwrap();
    assert_eq!(statuses(&events), vec![RunStatus::AwaitingArchive]);
    assert!(e.fake.sandboxes().is_empty(), "no sandbox was made");
}
