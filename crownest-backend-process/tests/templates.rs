//! A host application's own template on the process backend: a name → a `PATH` whose
//! `python3` (and `node`, optional) the template resolves, listed, checked at create, and
//! given to its commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use crownest_backend_process::{ProcessBackend, ProcessConfig};
use crownest_core::{EventKind, OutputStream, RunSpec, RunStatus, SandboxBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_template_is_listed_checked_and_gets_its_path() {
    // A toolchain directory with only python3 (the host's interpreter itself, not a shim)
    // and sh: no node.
    let tools = tempfile::tempdir().unwrap();
    let python = std::process::Command::new(which("python3"))
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap();
    std::os::unix::fs::symlink(python.trim(), tools.path().join("python3")).unwrap();
    std::os::unix::fs::symlink(which("sh"), tools.path().join("sh")).unwrap();
    let path = tools.path().display().to_string();
    let backend = Arc::new(
        ProcessBackend::new(
            ProcessConfig::with_root(common::root())
                .with_template("py-only", path.clone())
                .with_template("broken", "/nonexistent"),
        )
        .unwrap(),
    );
    let listed = backend.templates().await.unwrap();
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["broken", "py-only", "python-node"]);
    let get = |n: &str| listed.iter().find(|t| t.name == n).unwrap();
    assert!(get("py-only").available && get("python-node").available);
    let facts = &get("py-only").identity.as_ref().unwrap().facts;
    assert_eq!(facts["PATH"], path);
    assert!(facts.contains_key("node.missing"), "{facts:?}");
    assert!(!get("broken").available);
    assert!(
        get("broken")
            .reason
            .as_deref()
            .unwrap()
            .contains("python3 is required by broken"),
        "{:?}",
        get("broken").reason
    );

    let engine = common::engine(backend.clone()).await;
    let id = common::start(
        &engine,
        RunSpec::new(["sh", "-c", "echo \"$PATH\"; command -v python3"])
            .with_backend("process")
            .with_template("py-only"),
    )
    .await;
    let done = engine.wait(&id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let events = common::events(&engine, &id).await;
    let out: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    let _ = OutputStream::Stdout;
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("{path}\n{}/python3\n", tools.path().display())
    );
    // Unavailable and unknown templates are refused at create, before anything is stored.
    for (template, says) in [("broken", "unavailable"), ("nope", "unknown template")] {
        let err = engine
            .create(
                RunSpec::new(["true"])
                    .with_backend("process")
                    .with_template(template),
            )
            .await
            .unwrap_err();
        assert!(err.chain().contains(says), "{template}: {}", err.chain());
    }
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} on PATH"))
}
