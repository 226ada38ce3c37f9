//! Templates of a host application's own: a name → per interpreter a WASI module file and
//! the sha256 it pins, listed by `templates()`, verified at create and before each command,
//! compiled through the same cache as the built-in modules, and named truthfully in the
//! evidence. Real wasmtime, a real copy of the pinned CPython module (and a tampered one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crownest_backend_wasm::{Interpreter, ModuleSource, WasmBackend, WasmModule, WasmTemplate};
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{
    Error, EventKind, FailureKind, MemoryStore, RunSpec, RunStatus, SandboxBackend, Sha256Digest,
    WorkspaceRuns,
};

/// The sha256 `modules.lock` pins for `name`.
fn pin(name: &str) -> String {
    include_str!("../modules.lock")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 6 && f[0] == name)
        .map(|f| f[3].to_owned())
        .unwrap()
}

/// The host application's own modules: the pinned CPython copied under another name, and
/// a copy with one byte changed (registered with the pinned digest all the same).
struct Modules {
    dir: tempfile::TempDir,
}

impl Modules {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let python = common::ensure_modules().join("python-3.12.0.wasm");
        std::fs::copy(&python, dir.path().join("my-python.wasm")).unwrap();
        let mut bytes = std::fs::read(&python).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(dir.path().join("tampered.wasm"), bytes).unwrap();
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn python(&self, file: &str) -> WasmTemplate {
        let sha = Sha256Digest::parse(&pin("cpython")).unwrap();
        WasmTemplate::new().with_module(
            Interpreter::Python,
            WasmModule::new(self.path(file), sha).unwrap(),
        )
    }

    /// The test configuration (shared compiled-module cache) with `my-py` (the copy) and
    /// `bad-py` (the tampered copy).
    fn backend(&self) -> WasmBackend {
        WasmBackend::new(
            common::config()
                .with_template("my-py", self.python("my-python.wasm"))
                .with_template("bad-py", self.python("tampered.wasm")),
        )
        .unwrap()
    }
}

async fn engine(backend: WasmBackend) -> WorkspaceRuns {
    WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(backend))
        .without_recovery()
        .open()
        .await
        .unwrap()
}

async fn run(engine: &WorkspaceRuns, spec: RunSpec) -> crownest_core::RunRecord {
    let run = engine.create(spec.with_backend("wasm")).await.unwrap();
    let archive = tar_gz(&[("data.txt", b"3 4 5\n", 0o644)]);
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), engine.wait(&run.id))
        .await
        .expect("the run ends within 120 s")
        .unwrap()
}

fn stdout_of(events: &[crownest_core::Event]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_template_is_listed_with_its_module_digest_and_runs_python() {
    let modules = Modules::new();
    let backend = modules.backend();
    let listed = backend.templates().await.unwrap();
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["bad-py", "my-py", "python-node"]);
    let get = |n: &str| listed.iter().find(|t| t.name == n).unwrap();
    assert!(
        get("python-node").available,
        "{:?}",
        get("python-node").reason
    );
    let mine = get("my-py");
    assert!(mine.available, "{:?}", mine.reason);
    let facts = &mine.identity.as_ref().unwrap().facts;
    assert_eq!(facts["python.sha256"], pin("cpython"));
    assert_eq!(facts["python.module"], "my-python.wasm");
    assert_eq!(facts["python.source"], "registered by the host application");
    // The same bytes as the pinned build: described as that build.
    assert!(
        facts["python.version"].starts_with("CPython 3.12.0"),
        "{facts:?}"
    );
    assert!(
        facts["python3.path"].starts_with(&modules.path("my-python.wasm").display().to_string()),
        "{facts:?}"
    );
    assert!(
        facts["node.missing"].contains("no node module"),
        "{facts:?}"
    );
    assert!(!facts.contains_key("node.sha256"), "{facts:?}");

    // Compiled through the same cache as the built-in module (keyed by the digest): what
    // the registered template compiled or loaded, a backend serving only python-node loads
    // from disk.
    let loaded = backend.preload_template("my-py").await.unwrap();
    assert_eq!(loaded.len(), 1, "python only: {loaded:?}");
    assert_eq!(loaded[0].interpreter, Interpreter::Python);
    let builtin = WasmBackend::new(common::config()).unwrap();
    let python = builtin
        .preload()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.interpreter == Interpreter::Python)
        .unwrap();
    assert_eq!(python.source, ModuleSource::DiskCache);

    let engine = engine(backend).await;
    let done = run(
        &engine,
        RunSpec::new([
            "python3",
            "-c",
            "import sys; print(sum(map(int, open('data.txt').read().split())), sys.version_info[:2])",
        ])
        .with_template("my-py"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let events = engine.list_events(&done.id, 0, 10_000).await.unwrap();
    assert_eq!(stdout_of(&events), "12 (3, 12)\n");
    // The evidence names the template and the registered module's digest and file.
    let evidence = engine.evidence(&done.id).await.unwrap();
    assert_eq!(evidence.template.name, "my-py");
    let used = &evidence.template.identity.as_ref().expect("identity").facts;
    assert_eq!(used["python.sha256"], pin("cpython"));
    assert_eq!(used["python.module"], "my-python.wasm");
    assert!(used["python3.path"].contains("my-python.wasm"), "{used:?}");

    // `node` selects a module this template does not have: spawn_failed, saying so.
    let done = run(
        &engine,
        RunSpec::new(["node", "-e", "console.log(1)"]).with_template("my-py"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Failed);
    let failure = done.failure.unwrap();
    assert_eq!(failure.kind, FailureKind::SpawnFailed);
    assert!(
        failure.message.contains("\"my-py\" does not have") && failure.message.contains("python3"),
        "{}",
        failure.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_module_makes_its_template_unavailable_and_is_never_run() {
    let modules = Modules::new();
    let backend = modules.backend();
    let listed = backend.templates().await.unwrap();
    let bad = listed.iter().find(|t| t.name == "bad-py").unwrap();
    assert!(!bad.available);
    assert!(bad.identity.is_none());
    let why = bad.reason.clone().unwrap();
    let tampered = modules.path("tampered.wasm").display().to_string();
    assert!(
        why.contains(&tampered)
            && why.contains(&format!(
                "pins its python module to sha256 {}",
                pin("cpython")
            )),
        "names the file and the digest expected: {why}"
    );
    // Only this template: the others stay available.
    assert!(
        listed
            .iter()
            .filter(|t| t.name != "bad-py")
            .all(|t| t.available)
    );

    // The engine refuses a run on it at create (HTTP 400, CLI exit 2), before anything is
    // stored; the backend's own create says the same.
    let err = backend
        .create(&crownest_core::SandboxSpec {
            template: "bad-py".into(),
            ..sandbox_spec()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, message } if field == "template" && message.contains(&tampered)),
        "{err:?}"
    );
    let engine = engine(backend.clone()).await;
    for (template, says) in [("bad-py", tampered.as_str()), ("nope", "\"my-py\"")] {
        let err = engine
            .create(
                RunSpec::new(["python3", "-c", "print(1)"])
                    .with_backend("wasm")
                    .with_template(template),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { field, message } if field == "template" && message.contains(says)),
            "{template}: {err:?}"
        );
    }
    assert!(
        engine
            .list(&crownest_core::store::RunQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    let err = backend.preload_template("bad-py").await.unwrap_err();
    assert!(err.chain().contains(&tampered), "{}", err.chain());

    // A module changed after its sandbox was created is not run either: the command is
    // spawn_failed, naming the file.
    let sandbox = backend
        .create(&crownest_core::SandboxSpec {
            template: "my-py".into(),
            ..sandbox_spec()
        })
        .await
        .unwrap();
    std::fs::copy(
        modules.path("tampered.wasm"),
        modules.path("my-python.wasm"),
    )
    .unwrap();
    let out = sandbox
        .exec(
            &crownest_core::ExecRequest::new(["python3", "-c", "print('never')"]),
            &NoSink,
        )
        .await
        .unwrap();
    match out.status {
        crownest_core::ExitStatus::SpawnFailed(m) => {
            assert!(
                m.contains("my-python.wasm") && m.contains("unavailable"),
                "{m}"
            );
        }
        other => panic!("a tampered module must not run: {other:?}"),
    }
    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_name_replaces_python_node_and_unknown_names_are_refused() {
    let modules = Modules::new();
    let backend = WasmBackend::new(
        common::config().with_template("python-node", modules.python("my-python.wasm")),
    )
    .unwrap();
    let listed = backend.templates().await.unwrap();
    assert_eq!(listed.len(), 1);
    let facts = &listed[0].identity.as_ref().unwrap().facts;
    assert_eq!(facts["python.module"], "my-python.wasm");
    assert!(facts.contains_key("node.missing"), "{facts:?}");
    let err = backend
        .create(&crownest_core::SandboxSpec {
            template: "nope".into(),
            ..sandbox_spec()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, message }
            if field == "template" && message.contains("\"nope\"") && message.contains("\"python-node\"")),
        "{err:?}"
    );
    // A module path must be absolute; a digest must be 64 hex digits.
    let err =
        WasmModule::new("python.wasm", Sha256Digest::parse(&pin("cpython")).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "path"),
        "{err:?}"
    );
    assert!(Sha256Digest::parse("e5dc").is_err());
}

fn sandbox_spec() -> crownest_core::SandboxSpec {
    crownest_core::SandboxSpec {
        run_id: crownest_core::RunId::new(),
        instance: "wasm-template-tests".into(),
        owner: crownest_core::run::RunOwner::current("wasm-template-tests"),
        template: "python-node".into(),
        limits: crownest_core::Limits::default(),
        network: crownest_core::Network::None,
    }
}

/// A sink for commands that must not start.
struct NoSink;

#[async_trait::async_trait]
impl crownest_core::ExecSink for NoSink {
    async fn started(&self) {
        panic!("the command must not start");
    }
    async fn output(&self, _: crownest_core::OutputStream, _: &[u8]) {
        panic!("the command must not write");
    }
}
