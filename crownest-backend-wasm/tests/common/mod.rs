//! Shared test setup: the modules (fetched by the repo's script when missing), one
//! compiled-module cache for every test binary, one backend per test binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use crownest_core::{ExecSink, OutputStream};

use crownest_backend_wasm::{WasmBackend, WasmConfig};
use crownest_core::conformance::Programs;

/// Runs `scripts/fetch-wasm-modules.sh` once per test binary (idempotent, ~0.1 s when the
/// modules are cached) and fails the test if it cannot get them.
pub(crate) fn ensure_modules() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        fetch("fetch-wasm-modules.sh", "the wasm tests need the modules");
        WasmConfig::default().modules_dir
    })
    .clone()
}

/// The configuration of the tests: modules from the fetch script's cache, compiled modules
/// in one directory under the target dir (shared by all test binaries, so python.wasm is
/// compiled once per target dir), workspaces under the target dir too.
pub(crate) fn config() -> WasmConfig {
    let modules = ensure_modules();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    WasmConfig::with_modules_dir(modules)
        .with_cache_dir(tmp.join("crownest-wasm-compiled"))
        .with_workspace_root(tmp.join("crownest-wasm-workspaces"))
}

/// One backend per test binary: every test shares its engine and loaded modules.
pub(crate) fn backend() -> WasmBackend {
    static BACKEND: OnceLock<WasmBackend> = OnceLock::new();
    BACKEND
        .get_or_init(|| WasmBackend::new(config()).expect("backend"))
        .clone()
}

pub(crate) fn backend_arc() -> Arc<WasmBackend> {
    Arc::new(backend())
}

fn py(code: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["python3".to_owned(), "-c".to_owned(), code.to_owned()];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

/// The conformance programs: CPython's, except those that need processes, signals or fifos
/// (WASI has none; `signal` stops the guest directly), and the symlink program falls back
/// to a relative target when WASI refuses an absolute one (the link still points outside
/// the workspace).
pub(crate) fn programs() -> Programs {
    Programs {
        run_forever_ignoring_term: None,
        // WASI preview 1 has no processes, no signals and no fifos.
        die_by_sigterm: None,
        fork_bomb: None,
        background_writer: None,
        term_tree: None,
        stubborn_tree: None,
        mkfifo: None,
        symlink: |t, l| {
            py(
                "import os, sys\nt, l = sys.argv[1], sys.argv[2]\ntry:\n    os.symlink(t, l)\nexcept OSError:\n    os.symlink('../' * 16 + t.lstrip('/'), l)",
                &[t, l],
            )
        },
        ..Programs::python3()
    }
}

/// Runs `scripts/<script>` of the repository (one of the idempotent fetch scripts) and
/// returns what it printed on stdout; fails the test, saying `why`, when it fails.
pub(crate) fn fetch(script: &str, why: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed; {why}:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the script prints UTF-8")
}

/// A sink that records everything, optionally slowly.
#[derive(Default)]
pub(crate) struct RecordingSink {
    pub(crate) started: AtomicUsize,
    pub(crate) output: Mutex<Vec<(OutputStream, Vec<u8>)>>,
    pub(crate) delay: Option<Duration>,
}

impl RecordingSink {
    pub(crate) fn text(&self, stream: OutputStream) -> String {
        let out = self.output.lock().unwrap();
        let bytes: Vec<u8> = out
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, d)| d.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[async_trait]
impl ExecSink for RecordingSink {
    async fn started(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    async fn output(&self, stream: OutputStream, data: &[u8]) {
        assert_eq!(
            self.started.load(Ordering::SeqCst),
            1,
            "started() comes first, once"
        );
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.output.lock().unwrap().push((stream, data.to_vec()));
    }
}
