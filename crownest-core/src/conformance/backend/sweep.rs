//! `sweep_orphans`, `keep` and `destroy` of sandboxes left behind.

use std::time::Duration;

use super::{BackendHarness, SWEEPS, dead_owner, me, run_spec, sandbox_spec, spec_of};
use crate::backend::ExecRequest;
use crate::time::Timestamp;

/// `sweep_orphans` destroys sandboxes whose owner is gone, and never one whose owner lives.
pub async fn sweep_orphans_destroys_unlisted_sandboxes(h: BackendHarness) {
    let _sweeps = SWEEPS.lock().await;
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
    let _sweeps = SWEEPS.lock().await;
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

/// `sweep_orphans(live)` spares a sandbox whose owner is gone while its run is in `live`,
/// and destroys it once the run is no longer live; the ids it returns are `Sandbox::id`s.
pub async fn sweep_spares_sandboxes_of_live_runs(h: BackendHarness) {
    let _sweeps = SWEEPS.lock().await;
    let spec = sandbox_spec("python-node", dead_owner());
    let run = spec.run_id.clone();
    let sandbox = h.backend.create(&spec).await.unwrap();
    let id = sandbox.id().to_owned();
    drop(sandbox);
    let swept = h
        .backend
        .sweep_orphans(std::slice::from_ref(&run))
        .await
        .unwrap();
    assert!(!swept.contains(&id), "the run is live: {swept:?}");
    let swept = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(swept.contains(&id), "no longer live: {swept:?} lacks {id}");
}

/// A kept sandbox survives sweeps until its `keep_until`, then the next sweep destroys it.
pub async fn kept_sandbox_survives_sweeps_until_its_deadline(h: BackendHarness) {
    let _sweeps = SWEEPS.lock().await;
    let sandbox = h.sandbox_with(super::sample_archive()).await;
    let sink = super::RecordingSink::default();
    sandbox
        .exec(
            &ExecRequest::new((h.programs.write_file)("note.txt", "kept")),
            &sink,
        )
        .await
        .unwrap();
    sandbox
        .keep(Timestamp::now().plus_millis(1500))
        .await
        .unwrap();
    let id = sandbox.id().to_owned();
    drop(sandbox); // like an engine that went away
    let swept = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(!swept.contains(&id), "kept and not expired: {swept:?}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let swept = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(
        swept.contains(&id),
        "an expired keep is swept: {swept:?} lacks {id}"
    );
    let again = h.backend.sweep_orphans(&[]).await.unwrap();
    assert!(!again.contains(&id), "swept twice: {again:?}");
}
