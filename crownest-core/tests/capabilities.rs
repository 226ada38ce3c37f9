//! Capabilities are data the engine acts on: which spec fields are hard requirements, and
//! what is recorded when a default is not enforced (`crownest_core::capability`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_core::testing::FakeBackend;
use crownest_core::{
    Capability, Error, LimitOverrides, MemoryStore, Network, RunSpec, WorkspaceRuns,
};

async fn engine() -> WorkspaceRuns {
    WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .without_recovery()
        .open()
        .await
        .unwrap()
}

fn spec() -> RunSpec {
    RunSpec::new(["fake", "exit:0"]).with_backend("fake")
}

#[test]
fn explicit_limits_are_hard_and_defaults_best_effort() {
    let hard = |s: &RunSpec| -> Vec<Capability> {
        s.requirements()
            .into_iter()
            .filter(|r| r.hard)
            .map(|r| r.capability)
            .collect()
    };
    assert!(
        hard(&spec()).is_empty(),
        "a default spec requires nothing hard"
    );
    let limited = spec().with_limits(LimitOverrides {
        memory_bytes: Some(1 << 28),
        pids: Some(64),
        ..LimitOverrides::default()
    });
    assert_eq!(
        hard(&limited),
        [Capability::MemoryLimit, Capability::PidsLimit]
    );
    let loosened = limited
        .with_best_effort(Capability::MemoryLimit)
        .with_best_effort(Capability::PidsLimit);
    assert!(hard(&loosened).is_empty());
    assert_eq!(
        hard(&spec().with_network(Network::Enabled).with_keep_sandbox(5)),
        [Capability::NetworkAccess, Capability::KeepSandbox]
    );
}

#[tokio::test]
async fn create_refuses_what_the_backend_cannot_enforce_and_stores_nothing() {
    let engine = engine().await;
    let err = engine
        .create(spec().with_limits(LimitOverrides {
            memory_bytes: Some(1 << 28),
            ..LimitOverrides::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_enforceable");
    assert_eq!(
        err.to_string(),
        "limits.memoryBytes needs memory_limit, which backend fake cannot enforce"
    );
    assert!(matches!(
        err,
        Error::NotEnforceable {
            capability: Capability::MemoryLimit,
            ..
        }
    ));
    let runs = engine.list(&Default::default()).await.unwrap();
    assert!(runs.is_empty(), "a refused spec stores no run");
}

#[tokio::test]
async fn best_effort_only_names_limits_that_may_be_best_effort() {
    let engine = engine().await;
    let err = engine
        .create(spec().with_best_effort(Capability::KeepSandbox))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "bestEffort"),
        "{err:?}"
    );
    // The wire form: snake_case names, omitted when empty.
    let json = serde_json::to_value(spec().with_best_effort(Capability::PidsLimit)).unwrap();
    assert_eq!(json["bestEffort"], serde_json::json!(["pids_limit"]));
    assert!(
        serde_json::to_value(spec())
            .unwrap()
            .get("bestEffort")
            .is_none()
    );
}
