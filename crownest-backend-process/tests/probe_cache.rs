//! The containment probe cache seen from outside: `ProcessBackend::new` writes
//! `<root>/.containment-probe.json` (mode 0600), a later construction takes the result from
//! it without probing, and a cached result that no longer works at spawn time makes the
//! backend re-probe once, retry, and say so in the isolation details.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use crownest_backend_process::{Containment, ProcessBackend, ProcessConfig};
use crownest_core::run::RunOwner;
use crownest_core::{
    ExecRequest, ExecSink, ExitStatus, Limits, Network, OutputStream, RunId, SandboxBackend as _,
    SandboxSpec,
};
use serde_json::{Value, json};

const FILE: &str = ".containment-probe.json";

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

/// The key the backend computes for `config` (boot id, euid, kernel release, config).
fn key(config: &ProcessConfig) -> Value {
    json!({
        "bootId": read("/proc/sys/kernel/random/boot_id"),
        "euid": rustix::process::geteuid().as_raw(),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "containment": format!("{:?}", config.containment),
        "isolateNetwork": config.isolate_network,
        "cgroupParent": config.cgroup_parent,
    })
}

/// A root and a config whose key no other test (and no in-memory entry) shares.
fn unique_config(name: &str) -> (tempfile::TempDir, ProcessConfig) {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let mut config = ProcessConfig::with_root(dir.path().join("root"));
    // Only consulted when a cgroup is probed; here it makes the cache key unique.
    config.cgroup_parent = Some(PathBuf::from(format!(
        "/nonexistent-crownest-test/{name}-{:016x}",
        rand::random::<u64>()
    )));
    (dir, config)
}

fn plant(root: &Path, key: Value, probe: Value) {
    std::fs::create_dir_all(root).unwrap();
    let text = json!({"schema": 2, "entries": [{"key": key, "value": probe}]});
    let path = root.join(FILE);
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

fn entries(root: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(root.join(FILE)).unwrap()).unwrap();
    v["entries"].as_array().unwrap().clone()
}

#[test]
fn construction_writes_the_cache_and_a_later_one_reads_it() {
    let (_dir, config) = unique_config("write");
    let b = ProcessBackend::new(config.clone()).unwrap();
    let path = config.root.join(FILE);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let e = entries(&config.root);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["key"], key(&config));
    assert_eq!(
        e[0]["value"]["applied"]["kind"].as_str().unwrap(),
        b.containment()
    );

    // Another config in the same root: a second entry, the first one kept.
    let mut other = config.clone();
    other.isolate_network = false;
    ProcessBackend::new(other.clone()).unwrap();
    let e = entries(&config.root);
    assert_eq!(e.len(), 2);
    assert!(e.iter().any(|e| e["key"] == key(&config)));
    assert!(e.iter().any(|e| e["key"] == key(&other)));

    // A result planted for a key not yet in memory is used as is (no probe).
    let (_dir2, config) = unique_config("read");
    plant(
        &config.root,
        key(&config),
        json!({"applied": {"kind": "process_group"}, "notes": ["planted by the test"]}),
    );
    let b = ProcessBackend::new(config.clone()).unwrap();
    assert_eq!(b.containment(), "process_group");
    assert_eq!(
        b.containment_notes(),
        vec!["planted by the test".to_owned()]
    );
}

#[test]
fn a_stale_or_malformed_file_is_reprobed() {
    let (_dir, config) = unique_config("stale");
    let mut stale = key(&config);
    stale["bootId"] = json!("00000000-0000-0000-0000-000000000000");
    plant(
        &config.root,
        stale,
        json!({"applied": {"kind": "process_group"}, "notes": ["stale"]}),
    );
    let b = ProcessBackend::new(config.clone()).unwrap();
    assert!(!b.containment_notes().contains(&"stale".to_owned()));
    let e = entries(&config.root);
    assert_eq!(e.len(), 1, "the other boot's entry is dropped");
    assert_eq!(e[0]["key"], key(&config));

    let (_dir, config) = unique_config("malformed");
    std::fs::create_dir_all(&config.root).unwrap();
    std::fs::write(config.root.join(FILE), b"{\"schema\":2,\"entries\":[{").unwrap();
    let b = ProcessBackend::new(config.clone()).unwrap();
    let e = entries(&config.root);
    assert_eq!(
        e[0]["value"]["applied"]["kind"].as_str().unwrap(),
        b.containment()
    );
}

struct Sink;

#[async_trait]
impl ExecSink for Sink {
    async fn started(&self) {}
    async fn output(&self, _: OutputStream, _: &[u8]) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_result_that_fails_at_spawn_is_reprobed_once_and_reported() {
    let (_dir, config) = unique_config("fallback");
    assert_eq!(config.containment, Containment::Auto);
    // The cache claims a cgroup containment whose parent does not exist: creating the
    // per-exec cgroup fails at spawn time.
    let bogus = config.cgroup_parent.clone().unwrap();
    plant(
        &config.root,
        key(&config),
        json!({"applied": {"kind": "cgroup", "parent": bogus}, "notes": []}),
    );
    let b = ProcessBackend::new(config.clone()).unwrap();
    assert_eq!(b.containment(), "cgroup", "taken from the cache");

    let spec = SandboxSpec {
        run_id: RunId::new(),
        instance: "probe-cache-test".into(),
        owner: RunOwner::current("probe-cache-test"),
        template: "python-node".into(),
        limits: Limits::default(),
        network: Network::None,
    };
    let sandbox = b.create(&spec).await.unwrap();
    let request = ExecRequest::new(["true"]);
    let outcome = sandbox.exec(&request, &Sink).await.unwrap();
    assert_eq!(outcome.status, ExitStatus::Exited(0));
    let iso = sandbox.isolation();
    let note = iso.details.get("containmentReprobed").unwrap();
    assert!(
        note.contains("cached containment probe (cgroup) failed"),
        "{note}"
    );
    assert!(note.contains(&bogus.display().to_string()), "{note}");
    assert_ne!(
        iso.process_containment, "cgroup",
        "the bogus parent cannot be the re-probed result"
    );
    assert_eq!(b.containment(), iso.process_containment);
    // The cache now holds the re-probed result.
    let e = entries(&config.root);
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0]["value"]["applied"]["kind"].as_str().unwrap(),
        iso.process_containment
    );
    // A second exec works directly; a request's own failure stays a plain spawn failure.
    let outcome = sandbox.exec(&request, &Sink).await.unwrap();
    assert_eq!(outcome.status, ExitStatus::Exited(0));
    let missing = ExecRequest {
        argv: vec!["/nonexistent/program".into()],
        ..request.clone()
    };
    let outcome = sandbox.exec(&missing, &Sink).await.unwrap();
    assert!(matches!(outcome.status, ExitStatus::SpawnFailed(_)));
    sandbox.destroy().await.unwrap();

    // A new sandbox of the same backend uses the re-probed result, with no note.
    let sandbox = b.create(&spec).await.unwrap();
    assert!(
        !sandbox
            .isolation()
            .details
            .contains_key("containmentReprobed")
    );
    sandbox.destroy().await.unwrap();
}
