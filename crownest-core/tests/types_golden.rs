//! Wire-format tests: golden JSON written by hand from DESIGN §2 must deserialize into the
//! types and serialize back to the same JSON.
#![allow(clippy::unwrap_used)]

use crownest_core::event::{ArtifactErrorReason, Event, EventKind, FailureKind, KillReason};
use crownest_core::{Error, Limits, Network, RunSpec, RunStatus};
use serde_json::Value;

fn golden(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn run_spec_round_trips_in_camel_case() {
    let text = golden("run_spec.json");
    let spec: RunSpec = serde_json::from_str(&text).unwrap();
    assert_eq!(spec.command[0], "sh");
    assert_eq!(spec.cwd, "src");
    assert_eq!(spec.timeout_ms, Some(30_000));
    assert!(spec.artifacts[0].required);
    assert!(!spec.artifacts[1].required);
    assert_eq!(spec.limits.memory_bytes, Some(512 * 1024 * 1024));
    assert_eq!(spec.limits.path_bytes, Some(32 * 1024 * 1024));
    assert_eq!(spec.network, Network::None);
    assert_eq!(spec.keep_sandbox.unwrap().ttl_ms, 60_000);
    assert_eq!(spec.idempotency_key.as_deref(), Some("build-42"));
    let back = serde_json::to_value(&spec).unwrap();
    assert_eq!(back, serde_json::from_str::<Value>(&text).unwrap());
    let limits = spec
        .validate(&Limits::default(), &Limits::default_maxima())
        .unwrap();
    assert_eq!(limits.timeout_ms, 30_000);
    assert_eq!(limits.kill_grace_ms, 500);
    assert_eq!(limits.entries, Limits::default().entries);
    assert_eq!(limits.path_bytes, 32 * 1024 * 1024);
}

#[test]
fn limits_list_the_path_bytes_budget() {
    let d = serde_json::to_value(Limits::default()).unwrap();
    assert_eq!(d["entries"], 200_000);
    assert_eq!(d["pathBytes"], 64 * 1024 * 1024);
    let m = Limits::default_maxima();
    assert_eq!(m.path_bytes, 1024 * 1024 * 1024);
    let back: Limits = serde_json::from_value(d.clone()).unwrap();
    assert_eq!(back, Limits::default());
    // A record written before the limit existed reads back with the default.
    let mut old = d;
    old.as_object_mut().unwrap().remove("pathBytes");
    let back: Limits = serde_json::from_value(old).unwrap();
    assert_eq!(back, Limits::default());
    // Resolved and bounded like every other limit.
    let field = |v: u64| {
        let spec = RunSpec::new(["true"]).with_limits(crownest_core::LimitOverrides {
            path_bytes: Some(v),
            ..Default::default()
        });
        match spec.validate(&Limits::default(), &m) {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    };
    assert_eq!(field(0), "limits.pathBytes");
    assert_eq!(field(m.path_bytes + 1), "limits.pathBytes");
    let ok = RunSpec::new(["true"]).with_limits(crownest_core::LimitOverrides {
        path_bytes: Some(m.path_bytes),
        ..Default::default()
    });
    assert_eq!(
        ok.validate(&Limits::default(), &m).unwrap().path_bytes,
        m.path_bytes
    );
}

#[test]
fn run_spec_defaults_are_deny_by_default() {
    let spec: RunSpec = serde_json::from_str(r#"{"command":["true"]}"#).unwrap();
    assert_eq!(spec, RunSpec::new(["true"]));
    assert_eq!(spec.template, "python-node");
    assert_eq!(spec.cwd, ".");
    assert!(spec.env.is_empty());
    assert_eq!(spec.network, Network::None);
    assert!(spec.keep_sandbox.is_none());
    let unknown = serde_json::from_str::<RunSpec>(r#"{"command":["true"],"comand":1}"#);
    assert!(unknown.is_err(), "unknown fields are refused, not ignored");
}

#[test]
fn run_spec_validation_is_typed() {
    let (d, m) = (Limits::default(), Limits::default_maxima());
    let field = |spec: RunSpec| match spec.validate(&d, &m) {
        Err(Error::InvalidSpec { field, .. }) => field,
        other => panic!("expected InvalidSpec, got {other:?}"),
    };
    assert_eq!(field(RunSpec::new(Vec::<String>::new())), "command");
    assert_eq!(
        field(RunSpec::new(["true"]).with_artifact("/etc/passwd", false)),
        "artifacts[0].path"
    );
    assert_eq!(
        field(RunSpec::new(["true"]).with_artifact("a/../../x", false)),
        "artifacts[0].path"
    );
    assert_eq!(
        field(RunSpec::new(["true"]).with_artifact(".", false)),
        "artifacts[0].path"
    );
    assert_eq!(
        field(
            RunSpec::new(["true"])
                .with_artifact("ok", false)
                .with_artifact("./ok", false)
        ),
        "artifacts[1].path"
    );
    assert_eq!(field(RunSpec::new(["true"]).with_cwd("../up")), "cwd");
    assert_eq!(field(RunSpec::new(["true"]).with_env("A=B", "x")), "env");
    assert_eq!(
        field(RunSpec::new(["true"]).with_timeout_ms(0)),
        "limits.timeoutMs"
    );
    assert_eq!(
        field(RunSpec::new(["true"]).with_timeout_ms(u64::MAX)),
        "limits.timeoutMs"
    );
    assert_eq!(
        field(RunSpec::new(["true"]).with_keep_sandbox(0)),
        "keepSandbox.ttlMs"
    );
    assert_eq!(
        field(
            RunSpec::new(["true"])
                .with_keep_sandbox(crownest_core::spec::MAX_KEEP_SANDBOX_TTL_MS + 1)
        ),
        "keepSandbox.ttlMs"
    );
    assert!(
        RunSpec::new(["true"])
            .with_keep_sandbox(crownest_core::spec::MAX_KEEP_SANDBOX_TTL_MS)
            .validate(&d, &m)
            .is_ok()
    );
    assert!(
        RunSpec::new(["true"])
            .with_artifact("out/dir/", true)
            .validate(&d, &m)
            .is_ok()
    );
}

#[test]
fn every_event_kind_round_trips() {
    let text = golden("events.jsonl");
    let mut kinds = Vec::new();
    for line in text.lines() {
        let event: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::from_str::<Value>(line).unwrap(),
            "{line}"
        );
        kinds.push(event.kind.type_name());
    }
    for want in [
        "status",
        "archive_progress",
        "stdout",
        "stderr",
        "output_truncated",
        "heartbeat",
        "kill",
        "artifact_collected",
        "artifact_error",
        "error",
        "terminal",
        "spec",
        "archive_verified",
        "environment",
    ] {
        assert!(kinds.contains(&want), "golden file covers {want}");
    }
}

#[test]
fn event_payloads_are_typed() {
    let text = golden("events.jsonl");
    let events: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(
        events[0].kind,
        EventKind::Status {
            status: RunStatus::AwaitingArchive,
            previous: None
        }
    ));
    match &events[4].kind {
        EventKind::Stderr(c) => assert_eq!(c.bytes(), vec![0xff]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        events[7].kind,
        EventKind::Kill {
            reason: KillReason::Timeout,
            ..
        }
    ));
    assert!(matches!(
        events[10].kind,
        EventKind::ArtifactError {
            reason: ArtifactErrorReason::NotRegular,
            ..
        }
    ));
    match &events[12].kind {
        EventKind::Terminal {
            status,
            exit_code,
            failure,
            duration_ms,
            ..
        } => {
            assert_eq!(*status, RunStatus::Failed);
            assert_eq!(*exit_code, Some(3));
            assert_eq!(failure.as_ref().unwrap().kind, FailureKind::ExitNonzero);
            assert_eq!(*duration_ms, 886);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[0].at.to_string(),
        "2026-11-29T16:47:29.123Z",
        "RFC 3339 UTC with milliseconds"
    );
}

#[test]
fn statuses_and_failure_kinds_are_snake_case() {
    for s in RunStatus::ALL {
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            Value::String(s.as_str().into())
        );
        assert_eq!(RunStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(
        serde_json::to_value(FailureKind::MissingRequiredArtifact).unwrap(),
        "missing_required_artifact"
    );
    assert_eq!(
        serde_json::to_value(FailureKind::HostRestarted).unwrap(),
        "host_restarted"
    );
    assert_eq!(
        serde_json::to_value(crownest_core::RejectReason::DigestMismatch).unwrap(),
        "digest_mismatch"
    );
    for r in [
        crownest_core::RejectReason::TooManyEntries,
        crownest_core::RejectReason::TooManyPathBytes,
    ] {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    assert_eq!(
        crownest_core::RejectReason::TooManyPathBytes.as_str(),
        "too_many_path_bytes"
    );
}

/// A bundle written before secrets were split from env (`crownest.evidence/v1`, by the
/// previous version, with `envNames` + salted hashes and `envSalt`) reads and writes back
/// byte for byte the same JSON value, so its digest, its in-toto view (also written then)
/// and its event chain all still verify.
#[test]
fn evidence_v1_bundles_round_trip_and_keep_their_in_toto_view() {
    use crownest_core::EvidenceBundle;
    use crownest_core::evidence::EVIDENCE_SCHEMA_V1;
    let original: Value = serde_json::from_str(&golden("evidence-v1/evidence.json")).unwrap();
    let bundle: EvidenceBundle = serde_json::from_value(original.clone()).unwrap();
    assert_eq!(bundle.schema, EVIDENCE_SCHEMA_V1);
    assert_eq!(bundle.schema_problem(), None);
    assert_eq!(bundle.env_names.as_ref().map(Vec::len), Some(2));
    // `limits.pathBytes` was added after v1 (it reads back as its default); the digest and
    // the in-toto view of a v1 bundle leave it out, everything else is byte for byte.
    let mut again = serde_json::to_value(&bundle).unwrap();
    again["limits"].as_object_mut().unwrap().remove("pathBytes");
    assert_eq!(again, original);
    let in_toto: Value = serde_json::from_str(&golden("evidence-v1/in-toto.json")).unwrap();
    assert_eq!(bundle.to_in_toto(), in_toto);
    let events: Vec<Event> = golden("evidence-v1/events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    bundle.verify_events(&events).unwrap();
    // The stored JSON verifies under v1's own rules (chain, outcome, artifacts).
    assert_eq!(crownest_core::evidence::verify(&original, &events), vec![]);

    // A v1.1 bundle carrying v1's salted hashes, or a v1 one without them, is malformed.
    let mut odd = bundle.clone();
    odd.schema = crownest_core::evidence::EVIDENCE_SCHEMA.into();
    assert!(odd.schema_problem().is_some());
    let mut odd = bundle;
    odd.env_salt = None;
    assert!(odd.schema_problem().is_some());
}
