//! Capabilities are data: a sandbox's report never claims more than its backend declares,
//! the engine refuses what a run requires and the backend lacks, and the evidence records
//! what a run asked for and did not get.

use super::{BackendHarness, me, run_spec, spec_of};
use crate::backend::{ExecRequest, SandboxSpec};
use crate::capability::{self, Capability, NetworkIsolation};
use crate::error::Error;
use crate::event::EventKind;
use crate::ids::RunId;
use crate::spec::{LimitOverrides, Limits, Network, RunSpec};
use crate::status::RunStatus;

/// A sandbox's `isolation()` never claims more than `capabilities()`, before and after a
/// command ran, and enforces what the capabilities declare.
pub async fn isolation_never_claims_more_than_capabilities(h: BackendHarness) {
    let caps = h.backend.capabilities();
    let mut networks = vec![Network::None];
    if caps.network_access {
        networks.push(Network::Enabled);
    }
    for network in networks {
        let spec = SandboxSpec {
            run_id: RunId::new(),
            instance: "conformance".into(),
            owner: me(),
            template: "python-node".into(),
            limits: Limits {
                memory_bytes: 512 * 1024 * 1024,
                pids: 256,
                ..Limits::default()
            },
            network,
        };
        let sandbox = h.backend.create(&spec).await.unwrap();
        let sink = super::RecordingSink::default();
        let mut reports = vec![("after create", sandbox.isolation())];
        sandbox
            .exec(&ExecRequest::new((h.programs.exit_with)(0)), &sink)
            .await
            .unwrap();
        reports.push(("after a command", sandbox.isolation()));
        for (when, report) in reports {
            assert_eq!(report.backend, h.backend.name(), "{when}");
            assert_eq!(
                capability::overclaims(&report, &caps),
                Vec::<Capability>::new(),
                "{when}, network {network:?}: the report claims more than the capabilities {caps:?}: {report:?}"
            );
            assert!(
                report.not_enforced.is_empty(),
                "{when}: notEnforced is the engine's to fill, not the backend's"
            );
            match network {
                Network::None if caps.network_isolation => {
                    assert_eq!(
                        report.network,
                        NetworkIsolation::None,
                        "{when}: declared network_isolation"
                    )
                }
                Network::None => {
                    assert_eq!(report.network, NetworkIsolation::NotIsolated, "{when}")
                }
                Network::Enabled => assert_eq!(report.network, NetworkIsolation::Enabled, "{when}"),
            }
            if caps.memory_limit {
                assert!(
                    report.memory_bytes.is_some(),
                    "{when}: declared memory_limit: {report:?}"
                );
            }
            if caps.pids_limit {
                assert!(
                    report.pids.is_some(),
                    "{when}: declared pids_limit: {report:?}"
                );
            }
        }
        sandbox.destroy().await.unwrap();
    }
}

/// What a run requires and the backend cannot enforce is refused at `create` with
/// `NotEnforceable` naming the field and the capability; accepted as best-effort, the
/// same spec is created. What the backend declares is never refused.
pub async fn a_hard_requirement_the_backend_lacks_is_refused_at_create(h: BackendHarness) {
    let engine = h.engine().await;
    let caps = h.backend.capabilities();
    let base = || spec_of((h.programs.exit_with)(0)).with_backend(h.backend.name());
    let cases: Vec<(Capability, &str, RunSpec, bool)> = vec![
        (
            Capability::MemoryLimit,
            "limits.memoryBytes",
            base().with_limits(LimitOverrides {
                memory_bytes: Some(256 * 1024 * 1024),
                ..LimitOverrides::default()
            }),
            true,
        ),
        (
            Capability::PidsLimit,
            "limits.pids",
            base().with_limits(LimitOverrides {
                pids: Some(128),
                ..LimitOverrides::default()
            }),
            true,
        ),
        (
            Capability::NetworkAccess,
            "network",
            base().with_network(Network::Enabled),
            false,
        ),
        (
            Capability::KeepSandbox,
            "keepSandbox",
            base().with_keep_sandbox(1000),
            false,
        ),
    ];
    for (capability, field, spec, can_be_best_effort) in cases {
        let created = engine.create(spec.clone()).await;
        if caps.has(capability) {
            let run = created.unwrap_or_else(|e| panic!("{capability} is declared: {e:?}"));
            engine.cancel(&run.id).await.unwrap();
            continue;
        }
        match created {
            Err(Error::NotEnforceable {
                field: f,
                capability: c,
                backend,
            }) => {
                assert_eq!((f.as_str(), c), (field, capability));
                assert_eq!(backend, h.backend.name());
            }
            other => panic!("{field} needs {capability}, which is not declared: {other:?}"),
        }
        if can_be_best_effort {
            let run = engine
                .create(spec.with_best_effort(capability))
                .await
                .unwrap_or_else(|e| panic!("{capability} accepted as best-effort: {e:?}"));
            engine.cancel(&run.id).await.unwrap();
        }
    }
    // The defaults a run merely inherits are never refused.
    let run = engine
        .create(base())
        .await
        .expect("a default spec is accepted");
    engine.cancel(&run.id).await.unwrap();
}

/// The evidence records, in `isolation.notEnforced`, exactly what the run asked for
/// (explicitly as best-effort, or by default) and the sandbox did not enforce; the spec
/// event records `bestEffort`.
pub async fn evidence_records_what_was_not_enforced(h: BackendHarness) {
    let spec = spec_of((h.programs.exit_with)(0))
        .with_limits(LimitOverrides {
            memory_bytes: Some(512 * 1024 * 1024),
            pids: Some(256),
            ..LimitOverrides::default()
        })
        .with_best_effort(Capability::MemoryLimit)
        .with_best_effort(Capability::PidsLimit);
    let (engine, done, events) = run_spec(&h, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let caps = h.backend.capabilities();
    let ev = engine.evidence(&done.id).await.unwrap();
    let iso = ev.isolation.clone().expect("isolation recorded");
    let mut want = Vec::new();
    if iso.network != NetworkIsolation::None {
        want.push(Capability::NetworkIsolation);
    }
    if !caps.memory_limit {
        want.push(Capability::MemoryLimit);
    }
    if !caps.pids_limit {
        want.push(Capability::PidsLimit);
    }
    assert_eq!(iso.not_enforced, want, "{iso:?}");
    if caps.memory_limit {
        assert_eq!(iso.memory_bytes, Some(512 * 1024 * 1024));
    }
    let spec_event = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Spec { spec } => Some(spec.clone()),
            _ => None,
        })
        .expect("a spec event");
    assert_eq!(
        spec_event.best_effort.into_iter().collect::<Vec<_>>(),
        [Capability::MemoryLimit, Capability::PidsLimit]
    );
    let bundle = serde_json::to_value(&ev).unwrap();
    let problems = crate::evidence::verify(&bundle, &events);
    assert!(problems.is_empty(), "the evidence verifies: {problems:?}");
    if !want.is_empty() {
        assert!(bundle["isolation"]["notEnforced"].is_array(), "{bundle}");
    }
}
