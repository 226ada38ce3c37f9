//! The CrowNest home: where it is, and opening the store and the engine in it.
//!
//! Layout: `<home>/store` is the [`SqliteStore`] (database + content-addressed blobs).
//! Process-backend sandboxes live under that backend's default root (tmpfs when there is
//! one), Docker and WASI sandboxes under theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use crownest_core::{EngineConfig, SandboxBackend, Store, WorkspaceRuns};
use crownest_store_sqlite::SqliteStore;

use crate::exit::usage;

/// `--home`, else `$CROWNEST_HOME` (both handled by clap), else the platform data dir.
pub(crate) fn resolve(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(home) = arg.filter(|h| !h.as_os_str().is_empty()) {
        return Ok(home);
    }
    dirs::data_dir()
        .map(|d| d.join("crownest"))
        .ok_or_else(|| usage("no home directory: pass --home DIR or set CROWNEST_HOME"))
}

/// One backend this build knows, registered or not.
#[derive(Debug)]
pub(crate) struct BackendSlot {
    /// Its name.
    pub(crate) name: &'static str,
    /// The backend, or why it could not be set up here.
    pub(crate) backend: Result<Arc<dyn SandboxBackend>, String>,
}

/// The engine and the backends behind it.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The engine (recovery already ran).
    pub(crate) engine: WorkspaceRuns,
    /// Every backend this build knows, in registration order.
    pub(crate) backends: Vec<BackendSlot>,
}

impl Opened {
    /// Fails with the reason when `name` is not usable here.
    pub(crate) fn require_backend(&self, name: &str) -> anyhow::Result<()> {
        match self.backends.iter().find(|b| b.name == name) {
            Some(BackendSlot { backend: Ok(_), .. }) => Ok(()),
            Some(BackendSlot {
                backend: Err(why), ..
            }) => Err(usage(format!("backend {name} is not usable here: {why}"))),
            None => Err(usage(format!(
                "no backend named {name:?} in this build (known: {})",
                self.backends
                    .iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// Opens the durable store under `<home>/store`.
pub(crate) async fn open_store(home: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let dir = home.join("store");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = SqliteStore::open(&dir)
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// Every backend of this build, constructed (not yet probed for templates).
#[cfg_attr(not(any(feature = "docker", feature = "wasm")), allow(unused_mut))]
pub(crate) async fn backends() -> Vec<BackendSlot> {
    let mut out = vec![BackendSlot {
        name: "process",
        backend: process_backend(),
    }];
    #[cfg(feature = "docker")]
    out.push(BackendSlot {
        name: "docker",
        backend: docker_backend().await,
    });
    #[cfg(feature = "wasm")]
    out.push(BackendSlot {
        name: "wasm",
        backend: wasm_backend(),
    });
    out
}

fn process_backend() -> Result<Arc<dyn SandboxBackend>, String> {
    use crownest_backend_process::{ProcessBackend, ProcessConfig};
    ProcessBackend::new(ProcessConfig::default())
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

#[cfg(feature = "docker")]
async fn docker_backend() -> Result<Arc<dyn SandboxBackend>, String> {
    use crownest_backend_docker::{DockerBackend, DockerConfig};
    DockerBackend::connect(DockerConfig::default())
        .await
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

#[cfg(feature = "wasm")]
fn wasm_backend() -> Result<Arc<dyn SandboxBackend>, String> {
    use crownest_backend_wasm::{WasmBackend, WasmConfig};
    WasmBackend::new(WasmConfig::default())
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

/// Opens the store and the engine with every usable backend; recovery runs (it never
/// touches a run whose owner process is alive).
pub(crate) async fn open(home: &Path) -> anyhow::Result<Opened> {
    let store = open_store(home).await?;
    let backends = backends().await;
    let mut builder = WorkspaceRuns::builder(store).config(EngineConfig {
        default_backend: Some("process".into()),
        ..EngineConfig::default()
    });
    let mut any = false;
    for slot in &backends {
        if let Ok(b) = &slot.backend {
            builder = builder.backend(b.clone());
            any = true;
        }
    }
    if !any || backends.first().is_none_or(|b| b.backend.is_err()) {
        let why = backends
            .first()
            .and_then(|b| b.backend.as_ref().err().cloned())
            .unwrap_or_default();
        anyhow::bail!("the process backend cannot be set up here: {why}");
    }
    let engine = builder.open().await.context("opening the engine")?;
    Ok(Opened { engine, backends })
}
