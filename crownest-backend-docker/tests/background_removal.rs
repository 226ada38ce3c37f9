//! `DockerConfig::with_background_removal`: a sandbox whose command ran to its end is
//! removed after `destroy()` returns; the record and the evidence say so
//! (`destroyed: true, removalPending: true`), `shutdown()` waits for the removal, and a
//! sandbox whose command never ran is still removed before `destroy()` returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use crownest_backend_docker::{DockerBackend, DockerConfig};
use crownest_core::{Destroyed, Limits, RunStatus, SandboxBackend, WorkspaceRuns};

async fn backend() -> Option<DockerBackend> {
    common::backend().await?;
    Some(
        DockerBackend::connect(DockerConfig::default().with_background_removal(true))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_is_removed_in_the_background_and_shutdown_waits_for_it() {
    let Some(b) = backend().await else {
        return;
    };
    let engine = WorkspaceRuns::builder(Arc::new(crownest_core::MemoryStore::new()))
        .backend(Arc::new(b.clone()))
        .without_recovery()
        .open()
        .await
        .unwrap();
    let run = engine
        .create(crownest_core::RunSpec::new(["true"]).with_backend("docker"))
        .await
        .unwrap();
    let a = common::archive();
    engine
        .upload_archive(&run.id, &crownest_core::testing::descriptor_of(&a), a)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    let done = engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let sandbox = done.sandbox.clone().unwrap();
    assert!(sandbox.destroyed, "nothing of it runs: destroyed");
    assert!(
        sandbox.removal_pending,
        "its removal was left to the background: {sandbox:?}"
    );
    let evidence = engine.evidence(&run.id).await.unwrap();
    let recorded = evidence.sandbox;
    assert!(
        recorded.destroyed && recorded.removal_pending,
        "{recorded:?}"
    );
    // The shutdown waits for the removal: nothing of the sandbox is left after it.
    engine.shutdown().await;
    common::assert_gone(&b, &sandbox.id).await;
    assert_eq!(b.wait_removals().await, 0, "nothing left to wait for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_command_never_ran_is_removed_before_destroy_returns() {
    let Some(b) = backend().await else {
        return;
    };
    let sandbox = b
        .create(&common::sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let id = sandbox.id().to_owned();
    assert!(!common::sandbox_containers(&b, &id).await.is_empty());
    // Its launcher still waits for a command (the container runs): no background removal.
    assert_eq!(sandbox.destroy().await.unwrap(), Destroyed::Gone);
    common::assert_gone(&b, &id).await;
}
