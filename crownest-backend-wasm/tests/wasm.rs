//! Behaviour of the wasm backend: real wasmtime, real CPython and QuickJS modules. (The
//! memory bomb and the output flood are backend conformance cases now:
//! `crownest_core::conformance`, run by `tests/conformance.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::RecordingSink;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crownest_backend_wasm::{ModuleSource, WasmBackend, WasmConfig};
use crownest_core::archive::ExtractPolicy;
use crownest_core::run::RunOwner;
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{
    EngineConfig, Error, Event, EventKind, ExecRequest, ExitStatus, FailureKind, KillSignal,
    Limits, MemoryStore, Network, OutputStream, RunId, RunRecord, RunSpec, RunStatus, Sandbox,
    SandboxBackend, SandboxSpec, WorkspaceRuns,
};

// ---------------------------------------------------------------- helpers

async fn engine() -> WorkspaceRuns {
    WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(common::backend_arc())
        .config(EngineConfig::default())
        .without_recovery()
        .open()
        .await
        .unwrap()
}

async fn run(
    files: &[(&str, &[u8], u32)],
    spec: RunSpec,
) -> (WorkspaceRuns, RunRecord, Vec<Event>) {
    let engine = engine().await;
    let run = engine.create(spec.with_backend("wasm")).await.unwrap();
    let archive = tar_gz(files);
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(120), engine.wait(&run.id))
        .await
        .expect("the run ends within 120 s")
        .unwrap();
    let events = engine.list_events(&run.id, 0, 100_000).await.unwrap();
    (engine, done, events)
}

fn stream_of(events: &[Event], stream: OutputStream) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match (&e.kind, stream) {
            (EventKind::Stdout(c), OutputStream::Stdout)
            | (EventKind::Stderr(c), OutputStream::Stderr) => Some(c.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn blob(engine: &WorkspaceRuns, done: &RunRecord, path: &str) -> Vec<u8> {
    let a = done
        .artifacts
        .iter()
        .find(|a| a.path == path)
        .unwrap_or_else(|| {
            panic!(
                "artifact {path} not collected: {:?} {:?}",
                done.artifact_errors, done.failure
            )
        });
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut engine.open_artifact(&a.artifact_id).await.unwrap().1,
        &mut bytes,
    )
    .unwrap();
    bytes
}

fn py(code: &str) -> RunSpec {
    RunSpec::new(["python3", "-c", code])
}

fn failure_kind(done: &RunRecord) -> Option<FailureKind> {
    done.failure.as_ref().map(|f| f.kind)
}

fn sandbox_spec(limits: Limits) -> SandboxSpec {
    SandboxSpec {
        run_id: RunId::new(),
        instance: "wasm-tests".into(),
        owner: RunOwner::current("wasm-tests"),
        template: "python-node".into(),
        limits,
        network: Network::None,
    }
}

async fn sandbox_with(files: &[(&str, &[u8], u32)]) -> Arc<dyn Sandbox> {
    let sandbox: Arc<dyn Sandbox> = Arc::from(
        common::backend()
            .create(&sandbox_spec(Limits::default()))
            .await
            .unwrap(),
    );
    let archive = tar_gz(files);
    sandbox
        .materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive.to_vec()))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap();
    sandbox
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest::new(argv.iter().copied())
}

// ---------------------------------------------------------------- scripts and artifacts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_script_reads_the_archive_and_writes_an_artifact() {
    let script = b"import json, sys\nwords = open('input/words.txt').read().split()\nimport os\nos.makedirs('out', exist_ok=True)\njson.dump({'count': len(words), 'arg': sys.argv[1]}, open('out/result.json', 'w'))\nprint('wrote', len(words))\n";
    let files: &[(&str, &[u8], u32)] = &[
        ("job.py", script, 0o644),
        ("input/words.txt", b"a b c d\n", 0o644),
    ];
    let (engine, done, events) = run(
        files,
        RunSpec::new(["python3", "job.py", "x1"]).with_artifact("out/result.json", true),
    )
    .await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?}\n{}",
        done.failure,
        stream_of(&events, OutputStream::Stderr)
    );
    assert_eq!(stream_of(&events, OutputStream::Stdout), "wrote 4\n");
    let json: serde_json::Value =
        serde_json::from_slice(&blob(&engine, &done, "out/result.json").await).unwrap();
    assert_eq!(json, serde_json::json!({"count": 4, "arg": "x1"}));
    let evidence = engine.evidence(&done.id).await.unwrap();
    let identity = &evidence.template.identity.as_ref().expect("identity").facts;
    assert_eq!(
        identity.get("python.module").map(String::as_str),
        Some("python-3.12.0.wasm")
    );
    assert_eq!(
        evidence
            .isolation
            .as_ref()
            .map(|i| i.process_containment.as_str()),
        Some("wasm")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_script_runs_on_quickjs_and_writes_an_artifact() {
    let script = b"import * as std from 'qjs:std';\nconst input = std.loadFile('data.txt').trim();\nconst f = std.open('out.txt', 'w');\nf.puts(input.toUpperCase() + ' ' + scriptArgs.slice(1).join(','));\nf.close();\nconsole.log('js says', 6 * 7);\n";
    let files: &[(&str, &[u8], u32)] =
        &[("job.js", script, 0o644), ("data.txt", b"shout\n", 0o644)];
    let (engine, done, events) = run(
        files,
        RunSpec::new(["node", "job.js", "a", "b"]).with_artifact("out.txt", true),
    )
    .await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?}\n{}",
        done.failure,
        stream_of(&events, OutputStream::Stderr)
    );
    assert_eq!(stream_of(&events, OutputStream::Stdout), "js says 42\n");
    assert_eq!(blob(&engine, &done, "out.txt").await, b"SHOUT a,b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_pass_through_for_both_interpreters() {
    let files: &[(&str, &[u8], u32)] = &[(
        "exit.js",
        b"import * as std from 'qjs:std';\nstd.exit(7);\n",
        0o644,
    )];
    let (_, done, _) = run(files, RunSpec::new(["node", "exit.js"])).await;
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(failure_kind(&done), Some(FailureKind::ExitNonzero));
    let (_, done, _) = run(&[], py("raise SystemExit(5)")).await;
    assert_eq!(done.exit_code, Some(5));
    // An uncaught exception is CPython's exit status 1, with the traceback on stderr.
    let (_, done, events) = run(&[], py("raise ValueError('boom')")).await;
    assert_eq!(done.exit_code, Some(1));
    assert!(stream_of(&events, OutputStream::Stderr).contains("ValueError: boom"));
}

// ---------------------------------------------------------------- deadlines

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_in_guest_code_times_out() {
    // Loaded first, so the deadline falls inside the guest's loop, not in module loading.
    common::backend().preload().await.unwrap();
    let (_, done, events) = tokio::time::timeout(
        Duration::from_secs(30),
        run(
            &[],
            py("print('spinning', flush=True)\nwhile True: pass").with_timeout_ms(4000),
        ),
    )
    .await
    .expect("the timed-out run ends within 30 s");
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        failure_kind(&done),
        Some(FailureKind::TimedOut),
        "{:?}",
        done.failure
    );
    let timeline: Vec<String> = events
        .iter()
        .map(|e| format!("{} {:?}", e.at, e.kind))
        .collect();
    assert_eq!(
        done.signal,
        Some(15),
        "stopped at the first rung (SIGTERM): {timeline:#?}"
    );
    assert!(stream_of(&events, OutputStream::Stdout).contains("spinning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_blocked_in_a_host_sleep_times_out() {
    common::backend().preload().await.unwrap();
    let (_, done, events) = tokio::time::timeout(
        Duration::from_secs(30),
        run(
            &[],
            py("import time\nprint('sleeping', flush=True)\ntime.sleep(1000)")
                .with_timeout_ms(4000),
        ),
    )
    .await
    .expect("the timed-out run ends within 30 s");
    assert!(
        stream_of(&events, OutputStream::Stdout).contains("sleeping"),
        "the deadline fell inside the sleep"
    );
    assert_eq!(
        failure_kind(&done),
        Some(FailureKind::TimedOut),
        "{:?}",
        done.failure
    );
    assert_eq!(done.signal, Some(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_stops_a_sleeping_or_spinning_guest_at_once() {
    for (code, signal, want) in [
        (
            "import time\nprint('ready', flush=True)\ntime.sleep(1000)",
            KillSignal::Term,
            15,
        ),
        (
            "print('ready', flush=True)\nwhile True: pass",
            KillSignal::Kill,
            9,
        ),
    ] {
        let sandbox = sandbox_with(&[]).await;
        let sink = Arc::new(RecordingSink::default());
        let task = {
            let (sandbox, sink) = (sandbox.clone(), sink.clone());
            let req = request(&["python3", "-c", code]);
            tokio::spawn(async move { sandbox.exec(&req, sink.as_ref()).await })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sink.text(OutputStream::Stdout).contains("ready") {
            assert!(Instant::now() < deadline, "the guest never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            sandbox.signal(signal).await.unwrap();
            task.await
        })
        .await
        .expect("exec returns within 5 s of the signal")
        .unwrap()
        .unwrap();
        assert_eq!(outcome.status, ExitStatus::Signaled(want));
        // Signalling with nothing running is fine.
        sandbox.signal(KillSignal::Kill).await.unwrap();
        sandbox.destroy().await.unwrap();
    }
}

// ---------------------------------------------------------------- limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_guest_down_without_losing_output() {
    let sandbox = sandbox_with(&[]).await;
    let sink = RecordingSink {
        delay: Some(Duration::from_millis(40)),
        ..RecordingSink::default()
    };
    let code = "import sys, time\nfor i in range(10):\n    sys.stdout.write(f'{i} {time.monotonic()}\\n')\n    sys.stdout.flush()";
    let outcome = sandbox
        .exec(&request(&["python3", "-c", code]), &sink)
        .await
        .unwrap();
    assert_eq!(outcome.status, ExitStatus::Exited(0));
    let stamps: Vec<f64> = sink
        .text(OutputStream::Stdout)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let (n, t) = l.split_once(' ').unwrap();
            assert_eq!(n, i.to_string());
            t.parse().unwrap()
        })
        .collect();
    assert_eq!(stamps.len(), 10);
    // Each write waited for the previous one to be accepted (40 ms each).
    let spread = stamps[9] - stamps[0];
    assert!(
        spread >= 9.0 * 0.040 * 0.9,
        "the guest was not held back: {spread:.3} s for 9 writes"
    );
    sandbox.destroy().await.unwrap();
}

// ---------------------------------------------------------------- filesystem isolation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_files_outside_the_workspace_cannot_be_opened() {
    let code = r#"
import os
for p in ['/etc/passwd', '/workspace/../etc/passwd', '../../../../etc/passwd', '/proc/self/environ', '/.crownest/python/../../etc/passwd']:
    try:
        open(p).read()
        print('OPENED', p)
    except OSError as e:
        print('denied', p, type(e).__name__)
try:
    open('/.crownest/python/sitecustomize.py', 'a').write('x')
    print('WROTE sitecustomize')
except OSError as e:
    print('denied write', type(e).__name__)
print(sorted(os.listdir('/workspace')))
"#;
    let files: &[(&str, &[u8], u32)] = &[("a.txt", b"a", 0o644)];
    let (_, done, events) = run(files, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let out = stream_of(&events, OutputStream::Stdout);
    assert!(
        !out.contains("OPENED") && !out.contains("WROTE") && !out.contains("root:"),
        "{out}"
    );
    assert_eq!(out.matches("denied").count(), 6, "{out}");
    assert!(out.contains("['a.txt']"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_pointing_outside_the_workspace_cannot_be_followed() {
    let sandbox = sandbox_with(&[("inside.txt", b"inside-content", 0o644)]).await;
    let ws = common::config()
        .workspace_root
        .join(sandbox.id())
        .join("workspace");
    assert!(
        ws.join("inside.txt").exists(),
        "workspace at {}",
        ws.display()
    );
    // Links made on the host (as a hostile archive could not, but a previous step might):
    // to an absolute host path, and to the sandbox's own marker next to the workspace.
    std::os::unix::fs::symlink("/etc/passwd", ws.join("abs")).unwrap();
    // The marker exists (so a link reaching it would open it, not fail on a missing file).
    let marker = crownest_core::hostdir::MARKER_FILE;
    assert!(ws.join("..").join(marker).is_file());
    std::os::unix::fs::symlink(format!("../{marker}"), ws.join("up")).unwrap();
    std::os::unix::fs::symlink("inside.txt", ws.join("ok")).unwrap();
    let code = r#"
import os
os.symlink('../../MARKER', 'guest-made')
for p in ['abs', 'up', 'guest-made', '/workspace/up']:
    try:
        print('OPENED', p, open(p).read()[:20])
    except OSError as e:
        print('blocked', p, type(e).__name__)
print('ok', open('ok').read())
"#
    .replace("MARKER", marker);
    let sink = RecordingSink::default();
    let outcome = sandbox
        .exec(&request(&["python3", "-c", code.as_str()]), &sink)
        .await
        .unwrap();
    let out = sink.text(OutputStream::Stdout);
    assert_eq!(
        outcome.status,
        ExitStatus::Exited(0),
        "{out}\n{}",
        sink.text(OutputStream::Stderr)
    );
    assert!(!out.contains("OPENED"), "{out}");
    assert_eq!(out.matches("blocked").count(), 4, "{out}");
    assert!(
        out.contains("ok inside-content"),
        "a link inside the workspace works: {out}"
    );
    sandbox.destroy().await.unwrap();
    assert!(!ws.exists(), "destroy removed the workspace");
}

// ---------------------------------------------------------------- spawn failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_programs_and_bad_cwds_are_spawn_failed() {
    let sandbox = sandbox_with(&[("file.txt", b"x", 0o644)]).await;
    let sink = RecordingSink::default();
    for argv in [
        &["sh", "-c", "echo hi"][..],
        &["/usr/bin/python3", "-c", "1"][..],
        &["bash"][..],
    ] {
        match sandbox.exec(&request(argv), &sink).await.unwrap().status {
            ExitStatus::SpawnFailed(m) => {
                assert!(m.contains("python3") && m.contains("node"), "{m}")
            }
            other => panic!("{argv:?}: {other:?}"),
        }
    }
    let mut req = request(&["python3", "-c", "1"]);
    req.cwd = "file.txt".into();
    assert!(
        matches!(sandbox.exec(&req, &sink).await.unwrap().status, ExitStatus::SpawnFailed(m) if m.contains("not a directory"))
    );
    req.cwd = "missing".into();
    assert!(matches!(
        sandbox.exec(&req, &sink).await.unwrap().status,
        ExitStatus::SpawnFailed(_)
    ));
    assert_eq!(
        sink.started.load(Ordering::SeqCst),
        0,
        "nothing was started"
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_trap_is_reported_as_signal_6_with_the_trap_on_stderr() {
    // os.abort() is wasi-libc's abort(): an `unreachable` instruction, so a trap.
    let sandbox = sandbox_with(&[]).await;
    let sink = RecordingSink::default();
    let code = "import os\nprint('before', flush=True)\nos.abort()";
    let outcome = sandbox
        .exec(&request(&["python3", "-c", code]), &sink)
        .await
        .unwrap();
    let err = sink.text(OutputStream::Stderr);
    assert_eq!(
        outcome.status,
        ExitStatus::Signaled(crownest_backend_wasm::TRAP_SIGNAL),
        "{err}"
    );
    assert!(
        err.contains("crownest-wasm: the guest ended with a trap"),
        "{err}"
    );
    sandbox.destroy().await.unwrap();
}

// ---------------------------------------------------------------- templates and modules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_is_the_pinned_module_digests() {
    let lock = include_str!("../modules.lock");
    let pin = |name: &str| -> String {
        lock.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 6 && f[0] == name)
            .map(|f| f[3].to_owned())
            .unwrap()
    };
    let templates = common::backend().templates().await.unwrap();
    let t = &templates[0];
    assert!(t.available, "{:?}", t.reason);
    let facts = &t.identity.as_ref().unwrap().facts;
    assert_eq!(facts["python.sha256"], pin("cpython"));
    assert_eq!(facts["node.sha256"], pin("quickjs"));
    assert!(facts["node.version"].contains("not Node.js"));
    assert_eq!(facts["runtime"], "wasmtime 48.0.8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_modules_make_the_template_unavailable() {
    let empty = tempfile::tempdir().unwrap();
    let backend = WasmBackend::new(
        WasmConfig::with_modules_dir(empty.path()).with_workspace_root(empty.path().join("ws")),
    )
    .unwrap();
    let t = &backend.templates().await.unwrap()[0];
    assert!(!t.available);
    assert!(
        t.reason
            .as_deref()
            .unwrap()
            .contains("scripts/fetch-wasm-modules.sh"),
        "{:?}",
        t.reason
    );
    let err = backend
        .create(&sandbox_spec(Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, message } if field == "template" && message.contains("fetch-wasm-modules")),
        "{err:?}"
    );
    // The engine refuses the run at create (HTTP 400, CLI exit 2), before anything is
    // stored, naming the command that fixes it.
    let store = Arc::new(MemoryStore::new());
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(backend))
        .without_recovery()
        .open()
        .await
        .unwrap();
    let err = engine
        .create(py("print(1)").with_backend("wasm"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, message }
            if field == "template" && message.contains("unavailable") && message.contains("crownest setup wasm")),
        "{err:?}"
    );
    assert!(
        engine
            .list(&crownest_core::store::RunQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_enabled_is_refused() {
    let mut spec = sandbox_spec(Limits::default());
    spec.network = Network::Enabled;
    let err = common::backend().create(&spec).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "network"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_on_disk_and_in_memory() {
    // The shared backend compiled or loaded them; a second load is from memory.
    let shared = common::backend();
    shared.preload().await.unwrap();
    let again = shared.preload().await.unwrap();
    assert!(
        again.iter().all(|p| p.source == ModuleSource::Memory),
        "{again:?}"
    );
    // A fresh backend on the same cache dir loads the artefacts from disk, never compiling.
    let fresh = WasmBackend::new(common::config()).unwrap();
    let loaded = fresh.preload().await.unwrap();
    assert!(
        loaded.iter().all(|p| p.source == ModuleSource::DiskCache),
        "{loaded:?}"
    );
    let cwasm: Vec<_> = std::fs::read_dir(&common::config().cache_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert!(cwasm.len() >= 2, "{cwasm:?}");
    for name in &cwasm {
        assert!(
            common::config()
                .cache_dir
                .join(format!("{name}.sha256"))
                .exists(),
            "{name} has its digest"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cache_entry_is_recompiled_not_loaded() {
    // Only QuickJS (small, fast to compile) in a private cache dir.
    let dir = tempfile::tempdir().unwrap();
    let config = common::config().with_cache_dir(dir.path());
    let first = WasmBackend::new(config.clone()).unwrap();
    let sandbox = first
        .create(&sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let sink = RecordingSink::default();
    let cwasm_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    assert!(cwasm_files().is_empty());
    let out = sandbox
        .exec(&request(&["node", "-e", "console.log(1 + 1)"]), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    sandbox.destroy().await.unwrap();
    let cwasm = cwasm_files();
    assert_eq!(cwasm.len(), 1, "only QuickJS was compiled: {cwasm:?}");
    // Flip bytes in the middle of the artefact: a new backend must not load it.
    let mut bytes = std::fs::read(&cwasm[0]).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&cwasm[0], &bytes).unwrap();
    let second = WasmBackend::new(config).unwrap();
    let sandbox = second
        .create(&sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let sink = RecordingSink::default();
    let out = sandbox
        .exec(&request(&["node", "-e", "console.log(6 * 7)"]), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    assert_eq!(sink.text(OutputStream::Stdout), "42\n");
    assert_ne!(
        std::fs::read(&cwasm[0]).unwrap(),
        bytes,
        "the corrupted artefact was replaced"
    );
    sandbox.destroy().await.unwrap();
}

/// What a test runner hits under WASI: a relative `PYTHONPATH` resolves against the run's
/// working directory (not `/`), and `/dev/null` opens through `open` (logging, capture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_pythonpath_and_dev_null_work_as_on_a_native_host() {
    let code = "import logging, os, sys\n\
                import helper\n\
                print(helper.NAME, os.getcwd(), os.environ['PYTHONPATH'])\n\
                print([p for p in sys.path if p.startswith('/workspace')])\n\
                with open(os.devnull, 'w') as f: print(f.write('discarded'), f.name)\n\
                print(repr(open(os.devnull).read()), repr(open(os.devnull, 'rb').read()))\n\
                logging.basicConfig(filename=os.devnull, level=logging.INFO)\n\
                logging.info('to nowhere')\n\
                print('logged')\n";
    let files: &[(&str, &[u8], u32)] = &[("pkg/src/helper.py", b"NAME = 'helper'\n", 0o644)];
    let (_engine, done, events) = run(
        files,
        py(code)
            .with_cwd("pkg")
            .with_env("PYTHONPATH", "src:./src/../lib"),
    )
    .await;
    let stderr = stream_of(&events, OutputStream::Stderr);
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?}\n{stderr}",
        done.failure
    );
    assert_eq!(
        stream_of(&events, OutputStream::Stdout),
        "helper /workspace/pkg src:./src/../lib\n\
         ['/workspace/pkg/src', '/workspace/pkg/lib']\n\
         9 /dev/null\n\
         '' b''\n\
         logged\n"
    );
}
