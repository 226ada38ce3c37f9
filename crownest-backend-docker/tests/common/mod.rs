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
    // Written to the stderr handle directly: libtest captures `eprintln!`, and a skip must
    // be visible.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("skipped: {reason} (set CROWNEST_REQUIRE_DOCKER=1 to make this a failure)\n")
            .as_bytes(),
    );
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

/// An engine over a [`crownest_core::MemoryStore`] with this backend.
pub async fn engine(backend: &DockerBackend) -> crownest_core::WorkspaceRuns {
    crownest_core::WorkspaceRuns::builder(Arc::new(crownest_core::MemoryStore::new()))
        .backend(Arc::new(backend.clone()))
        .without_recovery()
        .open()
        .await
        .unwrap()
}

/// A small workspace archive.
pub fn archive() -> bytes::Bytes {
    crownest_core::testing::tar_gz(&[
        ("hello.txt", b"hello\n", 0o644),
        ("sub/inner.txt", b"inner\n", 0o644),
    ])
}

/// Runs `spec` (on the docker backend) to its end: the final record and every event.
pub async fn run(
    backend: &DockerBackend,
    spec: crownest_core::RunSpec,
) -> (crownest_core::RunRecord, Vec<crownest_core::Event>) {
    let engine = engine(backend).await;
    let run = engine.create(spec.with_backend("docker")).await.unwrap();
    let a = archive();
    engine
        .upload_archive(&run.id, &crownest_core::testing::descriptor_of(&a), a)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(180), engine.wait(&run.id))
        .await
        .expect("the run ends within 180 s")
        .unwrap();
    let events = engine.list_events(&run.id, 0, 100_000).await.unwrap();
    (done, events)
}

/// The bytes of one output stream of a run.
pub fn output_of(events: &[crownest_core::Event], stream: crownest_core::OutputStream) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match (&e.kind, stream) {
            (crownest_core::EventKind::Stdout(c), crownest_core::OutputStream::Stdout) => {
                Some(c.bytes())
            }
            (crownest_core::EventKind::Stderr(c), crownest_core::OutputStream::Stderr) => {
                Some(c.bytes())
            }
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `python3 -c CODE`.
pub fn py(code: &str) -> crownest_core::RunSpec {
    crownest_core::RunSpec::new(["python3", "-c", code])
}

/// Asserts that nothing labelled with `sandbox` exists any more (containers or volumes).
pub async fn assert_gone(backend: &DockerBackend, sandbox: &str) {
    use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
    let mut filters = std::collections::HashMap::new();
    let label = format!("{LABEL_SANDBOX}={sandbox}");
    filters.insert("label", vec![label]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let left = backend.docker().list_containers(Some(opts)).await.unwrap();
    assert!(
        left.is_empty(),
        "containers of {sandbox} survived: {left:?}"
    );
    let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = backend
        .docker()
        .list_volumes(Some(opts))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    assert!(
        volumes.is_empty(),
        "volumes of {sandbox} survived: {volumes:?}"
    );
    let vol = backend.docker().inspect_volume(sandbox).await;
    assert!(vol.is_err(), "volume {sandbox} survived");
    // Nor its bound workspace directory (a tombstone, `.removing-*`, may still be being
    // deleted in the background: it is unreachable by name).
    let left = bound_dirs(backend, sandbox);
    assert!(
        left.is_empty(),
        "the workspace directory of {sandbox} survived: {left:?}"
    );
}

/// The directories of `backend`'s work root whose marker names `sandbox` (its bound
/// workspace, `place.rs`), with their markers.
pub fn bound_dirs(
    backend: &DockerBackend,
    sandbox: &str,
) -> Vec<(std::path::PathBuf, serde_json::Value)> {
    marked_dirs(backend)
        .into_iter()
        .filter_map(|(path, marker)| {
            let marker = serde_json::to_value(marker).ok()?;
            (marker["state"]["sandbox"] == sandbox).then_some((path, marker))
        })
        .collect()
}

/// Every marked directory of `backend`'s work root (host staging, bound workspaces; not
/// the `.`-named ones: tombstones, directories being built), with its marker.
pub fn marked_dirs(
    backend: &DockerBackend,
) -> Vec<(std::path::PathBuf, crownest_core::hostdir::Marker)> {
    std::fs::read_dir(&backend.config().work_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path().join("crownest-sandbox.json")).ok()?;
            Some((e.path(), serde_json::from_slice(&bytes).ok()?))
        })
        .collect()
}

/// Every container (running or not) carrying the label `key=value`.
pub async fn labelled_containers(
    b: &DockerBackend,
    key: &str,
    value: &str,
) -> Vec<bollard::models::ContainerSummary> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let mut filters = std::collections::HashMap::new();
    filters.insert("label", vec![format!("{key}={value}")]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    b.docker().list_containers(Some(opts)).await.unwrap()
}

/// The containers labelled with `sandbox` (ids).
pub async fn sandbox_containers(b: &DockerBackend, sandbox: &str) -> Vec<String> {
    labelled_containers(b, LABEL_SANDBOX, sandbox)
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// What `docker inspect` says about a container's enforcement: everything but its name,
/// ids, timestamps and the labels that name its run, owner or pool. Two sandboxes with
/// the same limits and network must have equal profiles.
pub async fn hardening_profile(b: &DockerBackend, container: &str) -> serde_json::Value {
    let info = b.docker().inspect_container(container, None).await.unwrap();
    let mut hc = serde_json::to_value(info.host_config.unwrap()).unwrap();
    // Compared below without the labels' values.
    let host_mounts = hc
        .as_object_mut()
        .and_then(|o| o.remove("Mounts"))
        .unwrap_or_default();
    let host_mounts: Vec<serde_json::Value> = host_mounts
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            let keys: Vec<String> = m["VolumeOptions"]["Labels"]
                .as_object()
                .map(|l| {
                    l.keys()
                        .filter(|k| *k != "crownest.run_id" && *k != "crownest.pool")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            m["VolumeOptions"]["Labels"] = serde_json::json!(keys);
            // A bound workspace: a directory of its own in the work root, every time.
            if let Some(source) = m.get("Source").and_then(|s| s.as_str()) {
                let own = std::path::Path::new(source)
                    .parent()
                    .and_then(|d| d.parent())
                    .is_some_and(|r| {
                        std::fs::canonicalize(r).ok()
                            == std::fs::canonicalize(&b.config().work_dir).ok()
                    });
                m["Source"] = serde_json::json!(if own {
                    "<work root>/<dir>/workspace"
                } else {
                    source
                });
            }
            m
        })
        .collect();
    let cfg = info.config.unwrap();
    let mounts: Vec<serde_json::Value> = info
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "type": m.typ,
                "destination": m.destination,
                "rw": m.rw,
                "driver": m.driver,
                // Anonymous: the name is a fresh hash, never the sandbox's.
                "named": m.name.is_some_and(|n| n.starts_with("crownest-")),
            })
        })
        .collect();
    let mut labels: Vec<String> = cfg.labels.unwrap_or_default().into_keys().collect();
    labels.retain(|l| l != "crownest.run_id" && l != "crownest.pool");
    labels.sort();
    serde_json::json!({
        "user": cfg.user,
        "cmd": cfg.cmd,
        "entrypoint": cfg.entrypoint,
        "env": cfg.env,
        "workingDir": cfg.working_dir,
        "image": info.image,
        "openStdin": cfg.open_stdin,
        "hostConfig": hc,
        "mounts": mounts,
        "hostMounts": host_mounts,
        "labelKeys": labels,
    })
}

/// A sandbox spec of this test process.
pub fn sandbox_spec(limits: crownest_core::Limits) -> crownest_core::SandboxSpec {
    crownest_core::SandboxSpec {
        run_id: crownest_core::RunId::new(),
        instance: "docker-tests".into(),
        owner: crownest_core::run::RunOwner::current("docker-tests"),
        template: "python-node".into(),
        limits,
        network: crownest_core::Network::None,
    }
}

/// An [`crownest_core::ExecSink`] that keeps everything.
#[derive(Default)]
pub struct CollectSink {
    pub started: std::sync::atomic::AtomicUsize,
    pub stdout: std::sync::Mutex<Vec<u8>>,
    pub stderr: std::sync::Mutex<Vec<u8>>,
}

#[async_trait::async_trait]
impl crownest_core::ExecSink for CollectSink {
    async fn started(&self) {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    async fn output(&self, stream: crownest_core::OutputStream, data: &[u8]) {
        let target = match stream {
            crownest_core::OutputStream::Stdout => &self.stdout,
            crownest_core::OutputStream::Stderr => &self.stderr,
        };
        target.lock().unwrap().extend_from_slice(data);
    }
}

impl CollectSink {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }
}

/// A materialized sandbox of the small archive.
pub async fn sandbox(
    backend: &DockerBackend,
    limits: crownest_core::Limits,
) -> Box<dyn crownest_core::Sandbox> {
    let sb = backend.create(&sandbox_spec(limits)).await.unwrap();
    let a = archive();
    sb.materialize(
        crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(a.to_vec()))),
        &crownest_core::archive::ExtractPolicy::default(),
        &|_| {},
    )
    .await
    .unwrap();
    sb
}

/// An exec request.
pub fn request(argv: &[&str]) -> crownest_core::ExecRequest {
    crownest_core::ExecRequest::new(argv.iter().copied())
}

/// Runs `argv` in `sb`, asserts it exited 0 (its stderr in the message) and returns its
/// stdout.
pub async fn exec_ok(sb: &dyn crownest_core::Sandbox, argv: &[&str]) -> String {
    let sink = CollectSink::default();
    let out = sb.exec(&request(argv), &sink).await.unwrap();
    assert_eq!(
        out.status,
        crownest_core::ExitStatus::Exited(0),
        "{}",
        String::from_utf8_lossy(&sink.stderr.lock().unwrap())
    );
    sink.stdout()
}

/// Destroys `sb` and checks that nothing of it is left.
pub async fn destroy_gone(b: &DockerBackend, sb: Box<dyn crownest_core::Sandbox>) {
    let id = sb.id().to_owned();
    sb.destroy().await.unwrap();
    assert_gone(b, &id).await;
}
