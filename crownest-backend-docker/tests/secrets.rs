//! Secrets on the Docker backend: they reach the command, and never the container's
//! configuration (`docker inspect`, the daemon's `config.v2.json`), also of a kept sandbox.
//!
//! With `CROWNEST_REQUIRE_DOCKER=1` a missing engine or image fails these tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use crownest_backend_docker::LABEL_SANDBOX;
use crownest_core::{OutputStream, RunSpec, RunStatus, SandboxBackend as _};

const SECRET: &str = "dkr-S3cret 'q' \"d\" $HOME %s \\n ✓";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_sandbox_shows_no_secret_in_docker_inspect() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import os, sys\nv = os.environ['TOKEN']\nprint(v[::-1])\nprint(v)\n\
                print('ci=' + os.environ['CI'])\nprint(len(sys.stdin.read()))";
    let spec = RunSpec::new(["python3", "-c", code])
        .with_env("CI", "true")
        .with_secret("TOKEN", SECRET)
        .with_keep_sandbox(4_000);
    let (done, events) = common::run(&b, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let reversed: String = SECRET.chars().rev().collect();
    assert_eq!(
        common::output_of(&events, OutputStream::Stdout),
        format!("{reversed}\n***\nci=true\n0\n"),
        "the exact value arrived (a reversed echo is not masked: masking is an \
         accidental-echo guard only), the plain setting too, and stdin is empty"
    );
    let sandbox = done.sandbox.as_ref().unwrap();
    assert!(sandbox.kept && !sandbox.destroyed);
    if b.places_workspaces_from_host() {
        // The bound workspace directory is kept with the container: its marker carries the
        // deadline, so a sweep before it leaves the directory alone.
        let dirs = common::bound_dirs(&b, &sandbox.id);
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert!(!dirs[0].1["keepUntil"].is_null(), "{:?}", dirs[0].1);
        b.sweep_orphans(&[]).await.unwrap();
        assert_eq!(common::bound_dirs(&b, &sandbox.id).len(), 1, "kept");
    }

    let mut filters = std::collections::HashMap::new();
    filters.insert("label", vec![format!("{LABEL_SANDBOX}={}", sandbox.id)]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = b.docker().list_containers(Some(opts)).await.unwrap();
    assert!(!containers.is_empty(), "the kept run container is there");
    for c in &containers {
        let id = c.id.clone().unwrap();
        let info = b.docker().inspect_container(&id, None).await.unwrap();
        let inspect = serde_json::to_string(&info).unwrap();
        assert!(
            !inspect.contains("dkr-S3cret"),
            "docker inspect {id} shows the secret: {inspect}"
        );
        let env = info
            .config
            .as_ref()
            .unwrap()
            .env
            .clone()
            .unwrap_or_default();
        // The plain setting reached the command (above) through the launcher's frame, like
        // the secret: the configuration holds the template's variables only.
        assert!(!env.iter().any(|e| e.starts_with("CI=")), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("TOKEN=")), "{env:?}");
        // The daemon's own record of the container, when this host lets us read it.
        let on_disk = format!("/var/lib/docker/containers/{id}/config.v2.json");
        if let Ok(bytes) = std::fs::read(&on_disk) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains("dkr-S3cret"),
                "{on_disk} holds the secret"
            );
        }
    }

    // The keep deadline passes: the sweep (or the engine's keep timer) removes it all.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    b.sweep_orphans(&[]).await.unwrap();
    common::assert_gone(&b, &sandbox.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_of_any_shape_arrive_exactly() {
    let Some(b) = common::backend().await else {
        return;
    };
    let values = [
        ("MULTI", "line one\nline two\n"),
        ("EMPTY", ""),
        ("WIDE", "päss ✓ 🚀 `id` $(id) \\"),
    ];
    let mut spec = RunSpec::new([
        "python3",
        "-c",
        "import os, json; print(json.dumps({k: os.environ.get(k) for k in ['MULTI', 'EMPTY', 'WIDE']})[::-1])",
    ]);
    for (k, v) in values {
        spec = spec.with_secret(k, v);
    }
    let (done, events) = common::run(&b, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let printed: String = common::output_of(&events, OutputStream::Stdout)
        .trim_end()
        .chars()
        .rev()
        .collect();
    let got: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_str(&printed).unwrap();
    for (k, v) in values {
        assert_eq!(got[k].as_deref(), Some(v), "{k}");
    }
}
