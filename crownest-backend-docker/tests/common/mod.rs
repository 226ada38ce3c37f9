//! Shared helpers of the Docker backend's tests: one place decides whether the suite runs.
//!
//! With `CROWNEST_REQUIRE_DOCKER=1` a missing engine or image FAILS the test (CI must not
//! pass by skipping); without it the test prints why and returns early.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;

use crownest_backend_docker::{DockerBackend, DockerConfig, LABEL_OWNER_PID, LABEL_SANDBOX};
use crownest_core::SandboxBackend;
use crownest_core::conformance::{BackendHarness, Programs};

/// True when the environment demands the real engine.
pub fn docker_required() -> bool {
    std::env::var("CROWNEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The backend against the local engine, or `None` (test skipped, reason printed) when the
/// engine or the template image is missing and Docker is not required.
pub async fn backend() -> Option<DockerBackend> {
    let reason = match DockerBackend::connect(DockerConfig::default()).await {
        Err(e) => format!("Docker engine unavailable: {}", e.chain()),
        Ok(b) => match b.templates().await {
            Ok(t) if t.iter().any(|t| t.available) => return Some(b),
            Ok(t) => format!(
                "template image unavailable: {}",
                t.first().and_then(|t| t.reason.clone()).unwrap_or_default()
            ),
            Err(e) => format!("templates() failed: {}", e.chain()),
        },
    };
    if docker_required() {
        panic!("CROWNEST_REQUIRE_DOCKER=1 but {reason}");
    }
    eprintln!("skipped: {reason} (set CROWNEST_REQUIRE_DOCKER=1 to make this a failure)");
    None
}

/// The conformance harness, or `None` (see [`backend`]).
pub async fn harness() -> Option<BackendHarness> {
    let b = backend().await?;
    Some(BackendHarness::new(Arc::new(b), Programs::python3()))
}

/// Containers labelled by CrowNest whose owner is this test process.
pub async fn my_containers(backend: &DockerBackend) -> Vec<String> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let mut filters = std::collections::HashMap::new();
    let owner = format!("{LABEL_OWNER_PID}={}", std::process::id());
    filters.insert("label", vec![LABEL_SANDBOX.to_owned(), owner]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    backend
        .docker()
        .list_containers(Some(opts))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect()
}
