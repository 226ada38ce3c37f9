//! Evidence v2: every field of the bundle is bound to the event chain, so an edit of any
//! field is found and named; output streams are attested by totals and digests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crownest_core::event::{Event, EventKind};
use crownest_core::evidence::{EvidenceBundle, verify};
use crownest_core::signing::HostKey;
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz};
use crownest_core::{MemoryStore, RunRecord, RunSpec, WorkspaceRuns};

async fn engine(key: Option<Arc<HostKey>>) -> WorkspaceRuns {
    let mut b =
        WorkspaceRuns::builder(Arc::new(MemoryStore::new())).backend(Arc::new(FakeBackend::new()));
    if let Some(k) = key {
        b = b.host_key(k);
    }
    b.open().await.unwrap()
}

async fn run(engine: &WorkspaceRuns, spec: RunSpec) -> (RunRecord, EvidenceBundle, Vec<Event>) {
    let run = engine.create(spec).await.unwrap();
    let a = tar_gz(&[("main.py", b"print(1)\n", 0o644)]);
    engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&run.id))
        .await
        .unwrap()
        .unwrap();
    let evidence = engine.evidence(&run.id).await.unwrap();
    let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
    (done, evidence, events)
}

fn spec() -> RunSpec {
    let mut spec = RunSpec::new([
        "fake",
        "out:hello",
        "bin",
        "err:warn",
        "write:out/r.txt=result",
        "exit:0",
    ])
    .with_artifact("out/r.txt", true);
    spec.labels.insert("\u{1F600}emoji".into(), "grin".into());
    spec.labels.insert("\u{FB33}dalet".into(), "x".into());
    spec.labels.insert("commit".into(), "abc123".into());
    spec.env.insert("CI".into(), "true".into());
    spec
}

/// Sets the JSON pointer `path` of `v` to `new`.
fn edit(v: &Value, path: &str, new: Value) -> Value {
    let mut v = v.clone();
    *v.pointer_mut(path)
        .unwrap_or_else(|| panic!("no field {path} in the bundle")) = new;
    v
}

#[tokio::test]
async fn every_field_edit_is_found_and_named() {
    let e = engine(None).await;
    let (_, bundle, events) = run(&e, spec()).await;
    let value = serde_json::to_value(&bundle).unwrap();
    assert_eq!(
        verify(&value, &events),
        vec![],
        "the untouched bundle verifies"
    );
    assert!(bundle.template.identity.is_some());
    assert!(bundle.isolation.is_some());

    let cases: Vec<(&str, Value, &str)> = vec![
        ("/command/0", json!("python3"), "command[0]"),
        ("/cwd", json!("src"), "cwd"),
        ("/env/CI", json!("false"), "env.CI"),
        ("/limits/memoryBytes", json!(1), "limits.memoryBytes"),
        (
            "/source/labels/commit",
            json!("evil"),
            "source.labels.commit",
        ),
        ("/source/sha256", json!("0".repeat(64)), "source.sha256"),
        ("/source/upload", json!("staged"), "source.upload"),
        ("/template/name", json!("other"), "template.name"),
        ("/template/backend", json!("docker"), "template.backend"),
        (
            "/template/identity/facts/fake",
            json!("x"),
            "template.identity.facts.fake",
        ),
        (
            "/isolation/securityBoundary",
            json!(true),
            "isolation.securityBoundary",
        ),
        ("/isolation/network", json!("enabled"), "isolation.network"),
        (
            "/artifacts/0/sha256",
            json!("1".repeat(64)),
            "artifacts[0].sha256",
        ),
        ("/artifacts/0/sizeBytes", json!(1), "artifacts[0].sizeBytes"),
        (
            "/timestamps/started",
            json!("2020-01-01T00:00:00.000Z"),
            "timestamps.started",
        ),
        (
            "/timestamps/created",
            json!("2020-01-01T00:00:00.000Z"),
            "timestamps.created",
        ),
        ("/sandbox/destroyed", json!(false), "sandbox.destroyed"),
        ("/sandbox/kept", json!(true), "sandbox.kept"),
        ("/status", json!("failed"), "status"),
        ("/exitCode", json!(1), "exitCode"),
        ("/network", json!("enabled"), "network"),
        (
            "/output/stdout/sha256",
            json!("2".repeat(64)),
            "output.stdout.sha256",
        ),
        ("/crownestVersion", json!("9.9.9"), "crownestVersion"),
    ];
    for (path, new, field) in cases {
        let problems = verify(&edit(&value, path, new), &events);
        assert!(
            problems.iter().any(|p| p.field.as_deref() == Some(field)),
            "an edit of {path} is reported as field {field}: {problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.field.as_deref() == Some("bundleDigest")),
            "an edit of {path} breaks the bound digest: {problems:?}"
        );
    }
    // A field added to the bundle is a difference too.
    let mut added = value.clone();
    added["securityBoundary"] = json!(true);
    let problems = verify(&added, &events);
    assert!(
        problems
            .iter()
            .any(|p| p.field.as_deref() == Some("securityBoundary")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_v2_chain_cannot_be_verified_under_older_rules() {
    let e = engine(None).await;
    let (_, bundle, events) = run(&e, spec()).await;
    let value = serde_json::to_value(&bundle).unwrap();
    let mut downgraded = edit(&value, "/schema", json!("crownest.evidence/v1.1"));
    downgraded["command"] = json!(["python3", "-m", "pytest"]);
    let problems = verify(&downgraded, &events);
    assert!(
        problems
            .iter()
            .any(|p| p.field.as_deref() == Some("schema")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn chain_edits_are_found() {
    let e = engine(None).await;
    let (_, bundle, events) = run(&e, spec()).await;
    let value = serde_json::to_value(&bundle).unwrap();
    // An edited spec event breaks the chain.
    let mut edited = events.clone();
    if let EventKind::Spec { spec } = &mut edited[0].kind {
        spec.command = vec!["python3".into(), "-m".into(), "pytest".into()];
    }
    assert!(!verify(&value, &edited).is_empty());
    // A dropped event breaks it too.
    let mut dropped = events.clone();
    dropped.remove(3);
    assert!(!verify(&value, &dropped).is_empty());
}

#[tokio::test]
async fn output_streams_are_attested_by_totals_and_digests() {
    let e = engine(None).await;
    let (_, bundle, events) = run(&e, spec()).await;
    let output = bundle.output.clone().unwrap();
    let mut stdout = Vec::new();
    for ev in &events {
        if let EventKind::Stdout(c) = &ev.kind {
            stdout.extend(c.bytes());
        }
    }
    assert_eq!(output.stdout.total_bytes, stdout.len() as u64);
    assert_eq!(output.stdout.stored_bytes, stdout.len() as u64);
    assert_eq!(output.stdout.dropped_bytes, 0);
    assert_eq!(output.stdout.sha256, hex::encode(Sha256::digest(&stdout)));
    assert!(stdout.contains(&0xff), "binary output is in the digest");

    // Over the cap: the digest covers every byte, the stored ones are fewer.
    let mut capped = RunSpec::new(["fake", "outbytes:1000", "exit:0"]);
    capped.limits.output_bytes_per_stream = Some(100);
    let (_, bundle, events) = run(&e, capped).await;
    let out = bundle.output.clone().unwrap().stdout;
    assert_eq!(
        (out.total_bytes, out.stored_bytes, out.dropped_bytes),
        (1000, 100, 900)
    );
    let problems = verify(&serde_json::to_value(&bundle).unwrap(), &events);
    assert_eq!(problems, vec![]);
}

#[tokio::test]
async fn in_toto_always_has_subjects_and_the_envelope_is_made_at_the_end() {
    let key = Arc::new(HostKey::from_seed([3; 32]));
    let e = engine(Some(key.clone())).await;
    for steps in [
        vec!["fake", "out:x", "exit:0"],
        vec!["fake", "exit:3"],
        vec!["fake", "exit:0"],
    ] {
        let (done, bundle, _) = run(&e, RunSpec::new(steps)).await;
        let statement = bundle.to_in_toto();
        let subjects = statement["subject"].as_array().unwrap();
        assert!(
            !subjects.is_empty(),
            "{}: at least one subject",
            done.status
        );
        assert!(subjects.iter().any(|s| {
            s["name"]
                .as_str()
                .unwrap()
                .starts_with("crownest-evidence/")
        }));
        let envelope = e.evidence_envelope(&done.id).await.unwrap().unwrap();
        let signed = envelope.verify(&key.public_key()).unwrap();
        assert_eq!(
            signed, statement,
            "the stored envelope signs this bundle's view"
        );
    }
}

/// A run whose creation was interrupted between storing its record and its first commit has
/// no events; recovery still ends it with a v2 bundle whose chain opens with `spec`.
#[tokio::test]
async fn a_run_interrupted_at_creation_is_recovered_with_verifying_evidence() {
    use crownest_core::Store as _;
    use crownest_core::run::RunOwner;
    let store = Arc::new(MemoryStore::new());
    let dead = RunOwner {
        instance: "gone".into(),
        pid: 4_194_305,
        pid_start: Some(1),
    };
    let record = RunRecord::new(
        crownest_core::RunId::new(),
        spec(),
        "fake".into(),
        Default::default(),
        dead,
    );
    store.create_run(record.clone()).await.unwrap();
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(FakeBackend::new()))
        .open()
        .await
        .unwrap();
    let done = engine.get(&record.id).await.unwrap();
    assert_eq!(done.status, crownest_core::RunStatus::Failed);
    let events = engine.list_events(&record.id, 0, 100).await.unwrap();
    assert!(matches!(events[0].kind, EventKind::Spec { .. }));
    let bundle = engine.evidence(&record.id).await.unwrap();
    assert_eq!(
        verify(&serde_json::to_value(&bundle).unwrap(), &events),
        vec![]
    );
}
