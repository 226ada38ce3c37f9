//! The warm pool (`DockerConfig::with_pool`): members are hardened exactly like fresh
//! sandboxes, each is used by one run and destroyed after it, the pool refills, drains on
//! shutdown, and is swept after its owner process dies. The head start of one run
//! (`DockerConfig::with_head_start`) is waited for, taken once and never refilled.
//!
//! Each test pools its own template name (the `python-node` image under another name), so
//! the `crownest.pool` label tells its members apart from other tests' in this process.
//! No benchmark here: timings are `scripts/bench-docker.sh`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead as _;
use std::sync::Arc;
use std::time::Duration;

use common::{hardening_profile, sandbox_containers};
use crownest_backend_docker::{
    DEFAULT_IMAGE, DockerBackend, DockerConfig, LABEL_OWNER_PID, LABEL_POOL,
};
use crownest_core::{Limits, Network, RunStatus, SandboxBackend, WorkspaceRuns};

/// A backend serving `template` (the python-node image) with a pool of `size`.
async fn pooled_backend(template: &str, size: usize) -> Option<DockerBackend> {
    common::backend().await?;
    let config = DockerConfig::default()
        .with_template(template, DEFAULT_IMAGE)
        .with_pool(template, size);
    Some(DockerBackend::connect(config).await.unwrap())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Waits until `template`'s pool has `ready` members (fails after 120 s).
async fn ready(b: &DockerBackend, template: &str, ready: u64) {
    let wait = async {
        loop {
            let pools = b.pools();
            let p = pools.iter().find(|p| p.template == template).unwrap();
            assert!(p.last_error.is_none(), "refill failed: {p:?}");
            if p.ready >= ready && p.creating == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .expect("the pool fills within 120 s");
}

/// Containers labelled as members of `template`'s pool (ids), whoever owns them.
async fn members(b: &DockerBackend, template: &str) -> Vec<(String, HashMap<String, String>)> {
    common::labelled_containers(b, LABEL_POOL, template)
        .await
        .into_iter()
        .map(|c| (c.id.unwrap(), c.labels.unwrap_or_default()))
        .collect()
}

/// Materializes the sample archive in `sb` and checks that its command runs as the sandbox
/// user and reads the workspace (as in a fresh sandbox).
async fn runs_sample_repo(sb: &dyn crownest_core::Sandbox) {
    sb.materialize(
        crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(
            common::archive().to_vec(),
        ))),
        &crownest_core::archive::ExtractPolicy::default(),
        &|_| {},
    )
    .await
    .unwrap();
    let sink = common::CollectSink::default();
    let out = sb
        .exec(
            &common::request(&["sh", "-c", "id -u; cat hello.txt"]),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(out.status, crownest_core::ExitStatus::Exited(0));
    assert_eq!(sink.stdout(), "10001\nhello\n");
}

fn spec(template: &str, limits: Limits, network: Network) -> crownest_core::SandboxSpec {
    crownest_core::SandboxSpec {
        template: template.into(),
        network,
        ..common::sandbox_spec(limits)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_is_hardened_exactly_like_a_fresh_one() {
    let template = unique("pool-shape");
    let Some(b) = pooled_backend(&template, 1).await else {
        return;
    };
    ready(&b, &template, 1).await;
    let pooled = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(pooled.isolation().pooled, "taken from the pool");
    let fresh_backend =
        DockerBackend::connect(DockerConfig::default().with_template(&template, DEFAULT_IMAGE))
            .await
            .unwrap();
    let fresh = fresh_backend
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(!fresh.isolation().pooled);
    let (p, f) = (
        sandbox_containers(&b, pooled.id()).await,
        sandbox_containers(&b, fresh.id()).await,
    );
    assert_eq!((p.len(), f.len()), (1, 1));
    let (pp, fp) = (
        hardening_profile(&b, &p[0]).await,
        hardening_profile(&b, &f[0]).await,
    );
    assert_eq!(
        pp, fp,
        "docker inspect of a pooled and a fresh sandbox differ"
    );
    // The same report apart from the origin.
    let mut report = pooled.isolation();
    report.pooled = false;
    assert_eq!(report, fresh.isolation());
    // And it runs a command like a fresh one.
    runs_sample_repo(pooled.as_ref()).await;
    for sb in [pooled, fresh] {
        let id = sb.id().to_owned();
        sb.destroy().await.unwrap();
        common::assert_gone(&b, &id).await;
    }
    b.shutdown().await;
    assert!(members(&b, &template).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pooled_sandbox_is_ever_used_twice() {
    let template = unique("pool-once");
    let Some(b) = pooled_backend(&template, 2).await else {
        return;
    };
    ready(&b, &template, 2).await;
    let engine: WorkspaceRuns = WorkspaceRuns::builder(Arc::new(crownest_core::MemoryStore::new()))
        .backend(Arc::new(b.clone()))
        .without_recovery()
        .open()
        .await
        .unwrap();
    let one = |engine: WorkspaceRuns, template: String| async move {
        let run = engine
            .create(
                crownest_core::RunSpec::new(["true"])
                    .with_backend("docker")
                    .with_template(template),
            )
            .await
            .unwrap();
        let a = common::archive();
        engine
            .upload_archive(&run.id, &crownest_core::testing::descriptor_of(&a), a)
            .await
            .unwrap();
        engine.start(&run.id).await.unwrap();
        let done = engine.wait(&run.id).await.unwrap();
        let evidence = engine.evidence(&run.id).await.unwrap();
        (done, evidence)
    };
    // Three rounds of three concurrent runs on a pool of two: hits, misses and refills
    // interleave.
    let mut used = Vec::new();
    let mut pooled_runs = 0;
    for _ in 0..3 {
        let round =
            futures::future::join_all((0..3).map(|_| one(engine.clone(), template.clone()))).await;
        for (done, evidence) in round {
            assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
            let sandbox = done.sandbox.clone().unwrap();
            assert!(sandbox.destroyed, "destroyed after its run");
            common::assert_gone(&b, &sandbox.id).await;
            if evidence.isolation.as_ref().unwrap().pooled {
                pooled_runs += 1;
            }
            used.push(sandbox.id);
        }
    }
    let distinct: BTreeSet<_> = used.iter().collect();
    assert_eq!(
        distinct.len(),
        used.len(),
        "a sandbox served two runs: {used:?}"
    );
    assert!(
        pooled_runs >= 2,
        "the ready members were used: {pooled_runs}"
    );
    let status = b
        .pools()
        .into_iter()
        .find(|p| p.template == template)
        .unwrap();
    assert_eq!(status.hits, pooled_runs);
    assert_eq!(status.hits + status.misses, 9);
    assert_eq!(status.in_use, 0, "every claimed member was released");
    // Refilled to its size with new members, none of them a used one.
    ready(&b, &template, 2).await;
    let now: Vec<String> = members(&b, &template)
        .await
        .into_iter()
        .map(|(_, labels)| labels["crownest.sandbox"].clone())
        .collect();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.iter().all(|m| !used.contains(m)), "{now:?} vs {used:?}");
    engine.shutdown().await;
    assert!(members(&b, &template).await.is_empty(), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_does_not_fit_gets_a_fresh_sandbox() {
    let template = unique("pool-fit");
    let Some(b) = pooled_backend(&template, 1).await else {
        return;
    };
    ready(&b, &template, 1).await;
    let before = members(&b, &template).await;
    let other_limits = Limits {
        memory_bytes: 256 * 1024 * 1024,
        ..Limits::default()
    };
    for (limits, network) in [
        (other_limits, Network::None),
        (Limits::default(), Network::Enabled),
    ] {
        let sb = b.create(&spec(&template, limits, network)).await.unwrap();
        assert!(!sb.isolation().pooled, "{limits:?} {network:?}");
        let info = b.docker().inspect_container(sb.id(), None).await.unwrap();
        let hc = info.host_config.unwrap();
        assert_eq!(hc.memory, Some(limits.memory_bytes as i64));
        sb.destroy().await.unwrap();
    }
    let status = b
        .pools()
        .into_iter()
        .find(|p| p.template == template)
        .unwrap();
    assert_eq!((status.hits, status.misses), (0, 2));
    assert_eq!(
        members(&b, &template).await.len(),
        before.len(),
        "untouched"
    );
    b.shutdown().await;
    assert!(members(&b, &template).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_leaves_ready_members_refills_at_release() {
    let template = unique("pool-defer");
    let Some(b) = pooled_backend(&template, 2).await else {
        return;
    };
    ready(&b, &template, 2).await;
    let status = |b: &DockerBackend| {
        b.pools()
            .into_iter()
            .find(|p| p.template == template)
            .unwrap()
    };
    let first = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(first.isolation().pooled);
    // One member is still ready: its replacement waits for the claimed one's release.
    let s = status(&b);
    assert_eq!((s.ready, s.creating, s.in_use), (1, 0, 1), "{s:?}");
    first.destroy().await.unwrap();
    let s = status(&b);
    assert_eq!(s.in_use, 0, "{s:?}");
    assert_eq!(s.ready + s.creating, 2, "topped up at the release: {s:?}");
    ready(&b, &template, 2).await;
    // A claim that takes the last ready member tops up at once.
    let a = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    let s = status(&b);
    assert_eq!((s.ready, s.creating), (1, 0), "{s:?}");
    let last = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(a.isolation().pooled && last.isolation().pooled);
    let s = status(&b);
    assert_eq!((s.ready, s.creating), (0, 2), "{s:?}");
    a.destroy().await.unwrap();
    last.destroy().await.unwrap();
    ready(&b, &template, 2).await;
    assert_eq!(
        members(&b, &template).await.len(),
        2,
        "never more than its size"
    );
    b.shutdown().await;
    assert!(members(&b, &template).await.is_empty(), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_drains_on_shutdown_even_while_it_fills() {
    let template = unique("pool-drain");
    let Some(b) = pooled_backend(&template, 3).await else {
        return;
    };
    // At once: some members are still being created; each is removed once made.
    b.shutdown().await;
    assert!(members(&b, &template).await.is_empty(), "drained");
    let status = b
        .pools()
        .into_iter()
        .find(|p| p.template == template)
        .unwrap();
    assert_eq!((status.ready, status.creating), (0, 0), "{status:?}");
    // After the drain, create still works, without the pool.
    let sb = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(!sb.isolation().pooled);
    sb.destroy().await.unwrap();
    assert!(
        members(&b, &template).await.is_empty(),
        "no refill after the drain"
    );
}

/// A backend with the head start of one run of `template` (`DockerConfig::with_head_start`).
async fn head_start_backend(template: &str) -> Option<DockerBackend> {
    common::backend().await?;
    let config = DockerConfig::default()
        .with_template(template, DEFAULT_IMAGE)
        .with_head_start(template);
    Some(DockerBackend::connect(config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_start_is_waited_for_taken_once_and_never_refilled() {
    let template = unique("head-start");
    let Some(b) = head_start_backend(&template).await else {
        return;
    };
    let status = |b: &DockerBackend| {
        b.pools()
            .into_iter()
            .find(|p| p.template == template)
            .unwrap()
    };
    // At once, while its container is still being created: the run waits for it rather
    // than creating a second one.
    let s = status(&b);
    assert_eq!((s.ready, s.creating), (0, 1), "{s:?}");
    let sb = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(sb.isolation().pooled, "the head start was taken");
    assert_eq!(
        members(&b, &template).await.len(),
        1,
        "one container in all"
    );
    // It runs its command like any sandbox (the workspace through the launcher).
    runs_sample_repo(sb.as_ref()).await;
    let id = sb.id().to_owned();
    sb.destroy().await.unwrap();
    common::assert_gone(&b, &id).await;
    let s = status(&b);
    assert_eq!(
        (s.ready, s.creating, s.hits, s.misses),
        (0, 0, 1, 0),
        "never refilled: {s:?}"
    );
    // A second run gets a fresh sandbox at once (nothing to wait for).
    let second = b
        .create(&spec(&template, Limits::default(), Network::None))
        .await
        .unwrap();
    assert!(!second.isolation().pooled);
    second.destroy().await.unwrap();
    b.shutdown().await;
    assert!(members(&b, &template).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_start_that_does_not_fit_is_not_waited_for_and_is_removed_at_shutdown() {
    let template = unique("head-start-fit");
    let Some(b) = head_start_backend(&template).await else {
        return;
    };
    let other = Limits {
        memory_bytes: 256 * 1024 * 1024,
        ..Limits::default()
    };
    let sb = b
        .create(&spec(&template, other, Network::None))
        .await
        .unwrap();
    assert!(!sb.isolation().pooled);
    sb.destroy().await.unwrap();
    b.shutdown().await;
    assert!(
        members(&b, &template).await.is_empty(),
        "the unused head start is removed at shutdown"
    );
}

/// The child role of [`a_crashed_owners_pool_is_swept`]: fill a pool, say so, wait to die.
const CHILD_ENV: &str = "CROWNEST_POOL_TEST_CHILD_TEMPLATE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_owners_pool_is_swept() {
    if let Ok(template) = std::env::var(CHILD_ENV) {
        let b = pooled_backend(&template, 2).await.unwrap();
        ready(&b, &template, 2).await;
        println!("pool-ready");
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let Some(b) = common::backend().await else {
        return;
    };
    let template = unique("pool-crash");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_crashed_owners_pool_is_swept",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &template)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let saw_ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // (libtest prints `test NAME ... ` before it, on the same line.)
            .any(|l| l.ends_with("pool-ready"))
    });
    let saw_ready = tokio::time::timeout(Duration::from_secs(180), saw_ready)
        .await
        .expect("the child fills its pool within 180 s")
        .unwrap();
    assert!(saw_ready, "the child ended without filling its pool");
    let found = members(&b, &template).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let pid = child.0.id().to_string();
    assert!(
        found
            .iter()
            .all(|(_, l)| l.get(LABEL_OWNER_PID) == Some(&pid))
    );
    // A crash: no drain runs.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert_eq!(members(&b, &template).await.len(), 2, "left by the crash");
    if b.places_workspaces_from_host() {
        // Their bound workspace directories too, marked with the dead owner.
        for (_, labels) in &found {
            let dirs = common::bound_dirs(&b, &labels["crownest.sandbox"]);
            assert_eq!(dirs.len(), 1, "{dirs:?}");
            assert_eq!(dirs[0].1["owner"]["pid"].to_string(), pid);
        }
    }
    let swept = b.sweep_orphans(&[]).await.unwrap();
    for (_, labels) in &found {
        let sandbox = &labels["crownest.sandbox"];
        assert!(swept.contains(sandbox), "{sandbox} not in {swept:?}");
        common::assert_gone(&b, sandbox).await;
    }
}

/// Kills the child when the test fails half-way (else the test binary would wait for it).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_an_unknown_template_is_refused() {
    let Some(_) = common::backend().await else {
        return;
    };
    let err = DockerBackend::connect(DockerConfig::default().with_pool("no-such-template", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crownest_core::Error::InvalidSpec { field, .. } if field == "pool"),
        "{err:?}"
    );
}
