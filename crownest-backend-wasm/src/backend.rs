//! [`WasmBackend`]: the [`SandboxBackend`] running WASI preview 1 modules with wasmtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crownest_core::{
    Capabilities, Error, IsolationReport, Limits, Network, NetworkIsolation, ProcessContainment,
    Result, RunId, Sandbox, SandboxBackend, SandboxSpec, TemplateInfo,
};

use crate::compile::{ModuleSource, Runtime};
use crate::guest::PYTHON_SITECUSTOMIZE;
use crate::modules::{Interpreter, ModuleVerifier};
use crate::sandbox::WasmSandbox;
use crate::template::{self, PYTHON_NODE, TemplateModules};
use crate::{BACKEND, WasmConfig};
use crownest_core::hostdir::{Marker, SandboxDir, WorkRoot};

/// State shared by a backend and its sandboxes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: WasmConfig,
    pub(crate) runtime: Runtime,
    pub(crate) verifier: ModuleVerifier,
    /// The private work root, opened at first use (so an unsafe root fails the runs that
    /// need it, naming it, not the construction of every backend).
    root: std::sync::Mutex<Option<WorkRoot>>,
}

impl Shared {
    /// The verified modules of template `name`: `None` when this backend does not serve
    /// it, `Err(reason)` when it is unavailable. Blocking (hashes files that changed).
    pub(crate) fn verify(
        &self,
        name: &str,
    ) -> Option<std::result::Result<TemplateModules, String>> {
        template::verify(&self.config, &self.verifier, name)
    }

    /// The work root, opened (and checked) on first use.
    pub(crate) fn root(&self) -> Result<WorkRoot> {
        let mut slot = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(root) = slot.as_ref() {
            return Ok(root.clone());
        }
        let root = WorkRoot::open(&self.config.workspace_root)?;
        *slot = Some(root.clone());
        Ok(root)
    }
}

/// The wasm backend. Cheap to clone (an `Arc` inside); all clones share one wasmtime
/// engine, its epoch ticker thread and the modules loaded in memory.
#[derive(Debug, Clone)]
pub struct WasmBackend {
    shared: Arc<Shared>,
}

/// One module made ready by [`WasmBackend::preload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preloaded {
    /// Which interpreter.
    pub interpreter: Interpreter,
    /// Where it came from.
    pub source: ModuleSource,
    /// How long it took.
    pub elapsed: Duration,
}

impl WasmBackend {
    /// A backend with this configuration. Starts the epoch ticker thread; does not touch
    /// the modules yet (see [`WasmBackend::preload`]).
    pub fn new(config: WasmConfig) -> Result<Self> {
        let runtime = Runtime::new(config.cache_dir.clone(), config.epoch_tick)?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                runtime,
                verifier: ModuleVerifier::default(),
                root: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WasmConfig {
        &self.shared.config
    }

    /// Verifies both modules of `python-node` and loads them (from memory, the compiled
    /// cache, or by compiling), so the first run does not pay for it. Idempotent.
    pub async fn preload(&self) -> Result<Vec<Preloaded>> {
        self.preload_template(PYTHON_NODE).await
    }

    /// [`WasmBackend::preload`] for the modules of template `name` (a registered one, or
    /// `python-node`). An unknown template is [`Error::InvalidSpec`] (field `template`), an
    /// unavailable one [`Error::Unsupported`] with the reason.
    pub async fn preload_template(&self, name: &str) -> Result<Vec<Preloaded>> {
        let shared = self.shared.clone();
        let owned = name.to_owned();
        let modules = tokio::task::spawn_blocking(move || shared.verify(&owned))
            .await
            .map_err(|e| Error::Backend {
                backend: BACKEND.into(),
                source: Box::new(e),
            })?
            .ok_or_else(|| unknown_template(&self.shared.config, name))?
            .map_err(|reason| Error::Unsupported {
                operation: format!("the {name} template ({reason})"),
                backend: BACKEND.into(),
            })?;
        let mut out = Vec::new();
        for module in modules.modules() {
            let started = Instant::now();
            let (_, source) = self.shared.runtime.instance_pre(module).await?;
            out.push(Preloaded {
                interpreter: module.interpreter,
                source,
                elapsed: started.elapsed(),
            });
        }
        Ok(out)
    }
}

/// `Error::InvalidSpec` (field `template`) for a template this backend does not serve,
/// naming those it does.
fn unknown_template(config: &WasmConfig, name: &str) -> Error {
    Error::invalid(
        "template",
        format!(
            "unknown template {name:?} (the wasm backend serves {})",
            template::names(config)
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// The layout of a wasm sandbox directory, built by [`SandboxDir::create`] before the
/// directory is renamed into place: `workspace/` (the only read-write preopen) and
/// `python/sitecustomize.py`.
fn layout(d: &SandboxDir) -> std::io::Result<()> {
    d.mkdir("workspace", 0o755)?;
    d.mkdir("python", 0o755)?;
    d.write_file(
        "python/sitecustomize.py",
        PYTHON_SITECUSTOMIZE.as_bytes(),
        0o644,
    )
}

/// What the backend enforces; the same for every sandbox.
pub(crate) fn isolation_report(limits: &Limits) -> IsolationReport {
    let mut report = IsolationReport {
        backend: BACKEND.into(),
        network: NetworkIsolation::None,
        memory_bytes: Some(limits.memory_bytes),
        pids: Some(1),
        process_containment: ProcessContainment::Wasm,
        user: None,
        security_boundary: true,
        pooled: false,
        not_enforced: Vec::new(),
        details: Default::default(),
    };
    let d = &mut report.details;
    d.insert(
        "runtime".into(),
        format!("wasmtime {} (cranelift)", crate::WASMTIME_VERSION),
    );
    d.insert("wasi".into(), "preview1".into());
    d.insert(
        "preopens".into(),
        "/workspace (rw, the workspace), / (rw, the working directory), /.crownest/python (ro, CPython's sitecustomize.py; python only)".into(),
    );
    d.insert(
        "sockets".into(),
        "none (no preopened sockets; TCP, UDP and name lookup denied)".into(),
    );
    d.insert(
        "processes".into(),
        "one guest; WASI preview 1 cannot create processes".into(),
    );
    d.insert(
        "memoryLimit".into(),
        "guest linear memory (StoreLimits, trap on grow failure); host-side buffers not counted"
            .into(),
    );
    d.insert(
        "deadline".into(),
        "epoch interruption (ticker) + wall clock; signal stops the guest at once".into(),
    );
    d.insert(
        "user".into(),
        "none (WASI has no users; files are written as the host process's user)".into(),
    );
    d.insert("diskQuota".into(), "none".into());
    report
}

#[async_trait]
impl SandboxBackend for WasmBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            network_isolation: true,
            network_access: false,
            memory_limit: true,
            pids_limit: true,
            filesystem_isolation: true,
            process_tree_kill: true,
            keep_sandbox: true,
            non_root: false,
            security_boundary: true,
            // A trap is `Signaled(6)`; a guest cannot signal itself otherwise.
            exit_signal: true,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            template::names(&shared.config)
                .into_iter()
                .filter_map(|name| Some((shared.verify(&name)?, name)))
                .map(|(verified, name)| match verified {
                    Ok(m) => TemplateInfo {
                        name,
                        available: true,
                        reason: None,
                        identity: Some(m.identity()),
                    },
                    Err(reason) => TemplateInfo {
                        name,
                        available: false,
                        reason: Some(reason),
                        identity: None,
                    },
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Backend {
            backend: BACKEND.into(),
            source: Box::new(e),
        })
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        if !template::names(&self.shared.config).contains(&spec.template) {
            return Err(unknown_template(&self.shared.config, &spec.template));
        }
        if spec.network == Network::Enabled {
            return Err(Error::invalid(
                "network",
                "the wasm backend cannot give a guest network access (WASI preview 1 modules have no sockets)",
            ));
        }
        let this = self.clone();
        let spec = spec.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<WasmSandbox> {
            let modules = this
                .shared
                .verify(&spec.template)
                .ok_or_else(|| unknown_template(&this.shared.config, &spec.template))?
                .map_err(|reason| {
                    Error::invalid(
                        "template",
                        format!(
                            "{} is unavailable on the wasm backend: {reason}",
                            spec.template
                        ),
                    )
                })?;
            let marker = Marker::new(BACKEND, &spec.run_id, &spec.instance, spec.owner.clone());
            let root = this.shared.root()?;
            // The one crash-safe create: built under `.creating-`, renamed into place.
            let dir = SandboxDir::create(&root, &marker, layout)?;
            Ok(WasmSandbox::new(
                this.shared.clone(),
                dir,
                modules,
                spec.limits,
                marker,
            ))
        })
        .await
        .map_err(|e| Error::Backend {
            backend: BACKEND.into(),
            source: Box::new(e),
        })??;
        Ok(Box::new(made))
    }

    fn prepare_root(&self) -> Option<crownest_core::hostdir::WorkRoot> {
        self.shared.root().ok()
    }

    /// Waits for the deletions of sandbox directories still running in the background
    /// (`removalPending` in their evidence, see [`WasmConfig::removal_wait`]).
    async fn shutdown(&self) {
        if let Ok(root) = self.shared.root() {
            root.removals_settled().await;
        }
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let root = self.shared.root()?;
        let live = live.to_vec();
        let swept = tokio::task::spawn_blocking(move || {
            crownest_core::hostdir::sweep(&root, BACKEND, &live, &mut |_| {})
        })
        .await
        .map_err(|e| Error::Backend {
            backend: BACKEND.into(),
            source: Box::new(e),
        })??;
        Ok(swept)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crownest_core::run::RunOwner;

    const CRASH_ROOT: &str = "CROWNEST_WASM_TEST_CRASH_ROOT";
    const CRASH_TEST: &str = "backend::tests::a_crash_mid_create_leaves_only_a_creating_dir";

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    /// A process killed while it builds a wasm sandbox (its layout done, the rename not)
    /// leaves only a `.creating-` directory, which the backend's sweep removes once that
    /// process is gone. The crash is real: this test runs itself in a child process that
    /// kills itself (SIGKILL) inside `SandboxDir::create`.
    #[tokio::test]
    async fn a_crash_mid_create_leaves_only_a_creating_dir() {
        if let Some(root) = std::env::var_os(CRASH_ROOT) {
            let root = WorkRoot::open(std::path::PathBuf::from(root)).unwrap();
            let marker = Marker::new(
                crate::BACKEND,
                &RunId::new(),
                "crashing",
                RunOwner::current("crashing"),
            );
            let _ = SandboxDir::create(&root, &marker, |d| {
                layout(d)?;
                rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                )?;
                unreachable!("the process was killed")
            });
            unreachable!("the process was killed");
        }
        let tmp = tempfile::tempdir().unwrap();
        let ws_root = tmp.path().join("ws");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([CRASH_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_ROOT, &ws_root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "the child must have been killed: {status:?}"
        );
        let left = names(&ws_root);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(".creating-"), "{left:?}");
        // The layout was built inside it, never under a sandbox name.
        let building = ws_root.join(&left[0]);
        assert_eq!(
            names(&building),
            ["crownest-sandbox.json", "python", "workspace"]
        );

        let backend = WasmBackend::new(
            WasmConfig::with_modules_dir(tmp.path().join("no-modules"))
                .with_workspace_root(&ws_root),
        )
        .unwrap();
        let swept = backend.sweep_orphans(&[]).await.unwrap();
        assert!(
            swept.is_empty(),
            "a half-built directory is not a sandbox: {swept:?}"
        );
        assert!(names(&ws_root).is_empty(), "{:?}", names(&ws_root));
    }
}
