//! Recovery says only what is true of a reclaimed run's sandbox: `destroyed` once the sweep
//! actually removed it, otherwise not destroyed, with the reason in the failure message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_core::backend::{SandboxBackend, SandboxSpec};
use crownest_core::event::{EventKind, FailureKind, NewEvent};
use crownest_core::run::{RunOwner, RunRecord, SandboxRecord};
use crownest_core::store::{RunCommit, Store};
use crownest_core::testing::FakeBackend;
use crownest_core::{Limits, MemoryStore, Network, RunId, RunSpec, RunStatus, WorkspaceRuns};

/// An owner whose process is gone (a pid above the kernel's maximum).
fn dead() -> RunOwner {
    RunOwner {
        instance: "gone".into(),
        pid: 4_194_305,
        pid_start: Some(1),
    }
}

/// Stores a run `running` under a dead owner, with `sandbox` recorded.
async fn orphan(store: &Arc<dyn Store>, id: RunId, sandbox: Option<SandboxRecord>) -> RunRecord {
    let mut r = RunRecord::new(
        id,
        RunSpec::new(["fake", "hang"]),
        "fake".into(),
        Limits::default(),
        dead(),
    );
    store.create_run(r.clone()).await.unwrap();
    r.status = RunStatus::Running;
    r.sandbox = sandbox;
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
    r
}

fn record(id: &str, kept_until: Option<crownest_core::Timestamp>) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        kept: kept_until.is_some(),
        keep_until: kept_until,
        destroyed: false,
        removal_pending: false,
    }
}

#[tokio::test]
async fn a_reclaimed_sandbox_is_destroyed_only_when_the_sweep_removed_it() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let backend = FakeBackend::new();

    // 1. Its sandbox exists and its owner is gone: the sweep removes it.
    let swept_run = RunId::new();
    let sandbox = backend
        .create(&SandboxSpec {
            run_id: swept_run.clone(),
            instance: "gone".into(),
            owner: dead(),
            template: "python-node".into(),
            limits: Limits::default(),
            network: Network::None,
        })
        .await
        .unwrap();
    let swept_id = sandbox.id().to_owned();
    orphan(&store, swept_run.clone(), Some(record(&swept_id, None))).await;

    // 2. Its record names a sandbox the backend does not have (removed before, or never
    //    made): nothing was destroyed by this recovery.
    let missing_run = RunId::new();
    orphan(
        &store,
        missing_run.clone(),
        Some(record("never-made", None)),
    )
    .await;

    // 3. Its sandbox is kept until later: the sweep leaves it.
    let kept_run = RunId::new();
    let later = crownest_core::Timestamp::now().plus_millis(3_600_000);
    let kept = backend
        .create(&SandboxSpec {
            run_id: kept_run.clone(),
            instance: "gone".into(),
            owner: dead(),
            template: "python-node".into(),
            limits: Limits::default(),
            network: Network::None,
        })
        .await
        .unwrap();
    kept.keep(later).await.unwrap();
    let kept_id = kept.id().to_owned();
    orphan(
        &store,
        kept_run.clone(),
        Some(record(&kept_id, Some(later))),
    )
    .await;

    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(backend.clone()))
        .without_recovery()
        .open()
        .await
        .unwrap();
    let report = engine.recover().await.unwrap();
    assert_eq!(report.swept, vec![("fake".to_owned(), swept_id.clone())]);
    assert_eq!(report.reclaimed.len(), 3);
    assert!(backend.sandboxes()[&swept_id].destroyed);
    assert!(!backend.sandboxes()[&kept_id].destroyed);

    for (run, destroyed, says) in [
        (&swept_run, true, "destroyed by the fake sweep"),
        (&missing_run, false, "was not found by the fake sweep"),
        (&kept_run, false, "is kept"),
    ] {
        let r = engine.get(run).await.unwrap();
        assert_eq!(r.status, RunStatus::Failed);
        let failure = r.failure.as_ref().unwrap();
        assert_eq!(failure.kind, FailureKind::HostRestarted);
        assert!(
            failure.message.contains(says),
            "{run}: {:?} should say {says:?}",
            failure.message
        );
        assert_eq!(r.sandbox.as_ref().unwrap().destroyed, destroyed, "{run}");
        let evidence = engine.evidence(run).await.unwrap();
        assert_eq!(evidence.sandbox.destroyed, destroyed, "{run}: evidence");
        let events = engine.list_events(run, 0, 100).await.unwrap();
        evidence.verify_events(&events).unwrap();
        // The terminal event, which the bundle's digest binds, says the same.
        let terminal = events.last().unwrap();
        match &terminal.kind {
            EventKind::Terminal {
                sandbox: Some(sb), ..
            } => assert_eq!(sb.destroyed, destroyed, "{run}: terminal event"),
            other => panic!("{run}: the last event is {other:?}"),
        }
    }
}
