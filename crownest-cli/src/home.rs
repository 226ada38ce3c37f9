//! The CrowNest home: where it is, and opening the store and the engine in it.
//!
//! Layout: `<home>/store` is the [`SqliteStore`] (database + content-addressed blobs).
//! Process-backend sandboxes live under that backend's default root (tmpfs when there is
//! one), Docker and WASI sandboxes under theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use crownest_core::signing::HostKey;
use crownest_core::{EngineConfig, SandboxBackend, Store, WorkspaceRuns, WorkspaceRunsBuilder};
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

/// A warm pool for the Docker backend (`crownest serve --pool docker:TEMPLATE=N`): sizes
/// per template, and the limits its sandboxes are made with (the engine's defaults).
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolSettings {
    /// Template → size.
    pub(crate) docker: std::collections::BTreeMap<String, usize>,
    /// The engine's default limits.
    pub(crate) limits: crownest_core::Limits,
    /// The pool is the head start of one run (`DockerConfig::with_head_start`): its one
    /// template is made with `limits` (the run's) once, never refilled.
    pub(crate) head_start: bool,
}

impl PoolSettings {
    /// The head start of `crownest run --backend docker`: one sandbox of the run's template
    /// and limits, created while the command stores the archive and opens the engine.
    /// None when the run would not take it anyway (network enabled, a spec the engine
    /// refuses).
    pub(crate) fn head_start(spec: &crownest_core::RunSpec) -> Option<Self> {
        if spec.network != crownest_core::Network::None {
            return None;
        }
        let config = EngineConfig::default();
        let limits = spec.validate(&config.defaults, &config.maxima).ok()?;
        Some(Self {
            docker: std::collections::BTreeMap::from([(spec.template.clone(), 1)]),
            limits,
            head_start: true,
        })
    }
}

/// Which store the commands use (`--store`, `--blobs`).
#[derive(Debug, Clone)]
enum StoreChoice {
    /// `<home>/store`.
    Home,
    /// A PostgreSQL server, and where its blob bytes go (a path or URL, or `<home>/blobs`).
    Postgres { url: String, blobs: Option<String> },
}

static STORE: std::sync::OnceLock<StoreChoice> = std::sync::OnceLock::new();

/// Records `--store` / `--blobs` for every command of this process. A scheme other than
/// `postgres://` / `postgresql://` (or `sqlite` for the home's store), or `--blobs` without
/// a PostgreSQL store, is a usage error.
pub(crate) fn choose_store(store: Option<String>, blobs: Option<String>) -> anyhow::Result<()> {
    let store = store.filter(|s| !s.trim().is_empty());
    let blobs = blobs.filter(|s| !s.trim().is_empty());
    let choice = match store.as_deref().map(str::trim) {
        None | Some("sqlite") => {
            if let Some(b) = blobs {
                return Err(usage(format!(
                    "--blobs {b:?} needs a PostgreSQL --store (the home's store keeps its blobs \
                     in <home>/store)"
                )));
            }
            StoreChoice::Home
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            StoreChoice::Postgres {
                url: url.to_owned(),
                blobs,
            }
        }
        Some(other) => {
            return Err(usage(format!(
                "--store {:?}: give postgres://USER@HOST/DB, or leave it out for the home's \
                 store",
                crownest_store_postgres::redact_url(other)
            )));
        }
    };
    let _ = STORE.set(choice);
    Ok(())
}

/// The store the commands use, opened, and the SQLite store when it is that one (to close
/// before exiting).
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sqlite: Option<SqliteStore>,
}

/// Opens the store of `--store` (the home's by default).
async fn open_chosen(home: &Path, readers: Readers) -> anyhow::Result<Opened> {
    match STORE.get().cloned().unwrap_or(StoreChoice::Home) {
        StoreChoice::Home => {
            let sqlite = open_sqlite(home, readers).await?;
            Ok(Opened {
                store: Arc::new(sqlite.clone()),
                sqlite: Some(sqlite),
            })
        }
        StoreChoice::Postgres { url, blobs } => {
            let blobs = blobs.unwrap_or_else(|| home.join("blobs").display().to_string());
            let location = crownest_store_postgres::BlobLocation::parse(&blobs)
                .map_err(|e| usage(format!("--blobs: {e}")))?;
            let config = crownest_store_postgres::PostgresConfig::new_with_blobs(&url, location);
            let store = crownest_store_postgres::PostgresStore::open(config)
                .await
                .with_context(|| {
                    format!(
                        "opening the PostgreSQL store at {}",
                        crownest_store_postgres::redact_url(&url)
                    )
                })?;
            Ok(Opened {
                store: Arc::new(store),
                sqlite: None,
            })
        }
    }
}

/// Opens the durable store of `--store` (by default `<home>/store`).
pub(crate) async fn open_store(home: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_chosen(home, Readers::SameHost).await?.store)
}

/// Who may read a run's events while it is written: what decides how durable each commit
/// must be (`docs/engine.md`, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readers {
    /// Processes of this host only (the local CLI): they die with the host, so a commit
    /// before the terminal one need not survive a power loss before anyone reads it. The
    /// command is short-lived too: its store keeps one read connection.
    SameHost,
    /// Clients of a server (`serve`): they outlive a crash of this host, so every commit
    /// is fsynced before it is visible (`SqliteConfig::sync_every_commit`).
    Remote,
}

async fn open_sqlite(home: &Path, readers: Readers) -> anyhow::Result<SqliteStore> {
    let dir = home.join("store");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut config = crownest_store_sqlite::SqliteConfig::default()
        .with_sync_every_commit(readers == Readers::Remote);
    if readers == Readers::SameHost {
        // A CLI command is a short-lived process: one read connection besides the writer,
        // each connection costing an open and a parse of the schema (reads that overlap
        // wait for it; `serve` keeps its pool).
        // Its reads are small and few at a time: each runs on the thread that asks when
        // the connection is idle, without two hand-offs to and from the blocking pool.
        config = config.with_max_read_connections(1).with_inline_reads(true);
    }
    SqliteStore::open_with(&dir, config)
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))
}

/// Every backend of this build, constructed (not yet probed for templates). They are set up
/// concurrently: the process backend's containment probe (a fork into fresh namespaces) and
/// the Docker handshake each take a few milliseconds, and every command pays for them.
/// Templates registered in `<home>/templates.json` are added to their backends; a malformed
/// registry is a usage error.
pub(crate) async fn backends(home: &Path, pool: &PoolSettings) -> anyhow::Result<Vec<BackendSlot>> {
    let registered = crate::templates::Registered::load(home)?;
    let process = {
        let own = registered.process.clone();
        tokio::task::spawn_blocking(move || process_backend(&own))
    };
    #[cfg(feature = "wasm")]
    let wasm = {
        let own = registered.wasm.clone();
        tokio::task::spawn_blocking(move || wasm_backend(&own))
    };
    #[cfg(feature = "docker")]
    let docker = docker_backend(&registered, pool).await;
    #[cfg(not(feature = "docker"))]
    let _ = pool;
    let joined = |r: Result<Result<Arc<dyn SandboxBackend>, String>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Err(format!("setting up the backend panicked: {e}")))
    };
    #[cfg_attr(not(any(feature = "docker", feature = "wasm")), allow(unused_mut))]
    let mut out = vec![BackendSlot {
        name: crownest_backend_process::BACKEND,
        backend: joined(process.await),
    }];
    #[cfg(feature = "docker")]
    out.push(BackendSlot {
        name: crownest_backend_docker::BACKEND,
        backend: docker,
    });
    #[cfg(feature = "wasm")]
    out.push(BackendSlot {
        name: crownest_backend_wasm::BACKEND,
        backend: joined(wasm.await),
    });
    Ok(out)
}

/// The process backend, with the templates registered for it (name → `PATH`).
fn process_backend(
    own: &std::collections::BTreeMap<String, String>,
) -> Result<Arc<dyn SandboxBackend>, String> {
    use crownest_backend_process::{ProcessBackend, ProcessConfig};
    let mut config = own
        .iter()
        .fold(ProcessConfig::default(), |c, (name, path)| {
            c.with_template(name, path)
        });
    // A run's sandbox directory is deleted beside its terminal commit (the evidence says
    // `removalPending`); `run` and `serve` wait for those deletions at their end
    // (`WorkspaceRuns::shutdown`), and a crash leaves the tombstone to the sweep.
    config.removal_wait = std::time::Duration::ZERO;
    ProcessBackend::new(config)
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

#[cfg(feature = "docker")]
async fn docker_backend(
    registered: &crate::templates::Registered,
    pool: &PoolSettings,
) -> Result<Arc<dyn SandboxBackend>, String> {
    use crownest_backend_docker::{DockerBackend, DockerConfig};
    let config = registered
        .docker
        .iter()
        .fold(DockerConfig::default(), |c, (name, image)| {
            c.with_template(name, image)
        });
    let config = pool
        .docker
        .iter()
        .fold(config.with_pool_limits(pool.limits), |c, (t, n)| {
            if pool.head_start {
                // A template this backend does not serve is refused at create, by name;
                // no head start for it (`connect` would refuse the pool instead).
                if c.templates.contains_key(t) {
                    c.with_head_start(t)
                } else {
                    c
                }
            } else {
                c.with_pool(t, *n)
            }
        })
        // A run's stopped container is removed after its terminal commit (the evidence
        // says `removalPending`); `serve` and `run` wait for those removals at their end
        // (`WorkspaceRuns::shutdown`), and a crash leaves them to the sweep.
        .with_background_removal(true);
    DockerBackend::connect(config)
        .await
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

/// The WASI backend, with the templates registered for it (name → per interpreter a
/// module file and its pinned sha256).
#[cfg(feature = "wasm")]
fn wasm_backend(
    own: &std::collections::BTreeMap<String, crate::templates::WasmModules>,
) -> Result<Arc<dyn SandboxBackend>, String> {
    use crate::templates::WasmInterpreter;
    use crownest_backend_wasm::{Interpreter, WasmBackend, WasmConfig, WasmModule, WasmTemplate};
    // As for the process backend: the deletion overlaps the terminal commit.
    let mut config = WasmConfig {
        removal_wait: std::time::Duration::ZERO,
        ..WasmConfig::default()
    };
    for (name, modules) in own {
        let mut template = WasmTemplate::new();
        for (interpreter, entry) in modules {
            let interpreter = match interpreter {
                WasmInterpreter::Python => Interpreter::Python,
                WasmInterpreter::Node => Interpreter::Node,
            };
            // The registry checked the path already; the library's own check agrees.
            let module = WasmModule::new(&entry.path, entry.sha256.clone())
                .map_err(|e| format!("wasm template {name:?}: {}", e.chain()))?;
            template = template.with_module(interpreter, module);
        }
        config = config.with_template(name, template);
    }
    WasmBackend::new(config)
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(|e| e.chain())
}

/// The home's host key (`<home>/host-key.ed25519`, created on first use), which signs every
/// run's evidence in its terminal commit. Without one (an unwritable home) runs still end,
/// unsigned, and a warning says so.
fn host_key(home: &Path) -> Option<Arc<HostKey>> {
    match crate::hostkey::signing_key(home, None) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            eprintln!("crownest: warning: no host key, evidence will not be signed: {e:#}");
            None
        }
    }
}

fn with_host_key(builder: WorkspaceRunsBuilder, home: &Path) -> WorkspaceRunsBuilder {
    match host_key(home) {
        Some(k) => builder.host_key(k),
        None => builder,
    }
}

/// Opens the store and the engine with every usable backend; recovery runs (it never
/// touches a run whose owner process is alive).
pub(crate) async fn open(home: &Path) -> anyhow::Result<WorkspaceRuns> {
    open_with(home, &PoolSettings::default(), Readers::SameHost, |_, _| {
        Ok(())
    })
    .await
}

/// [`open`], with the engine configuration adjusted by `configure` (e.g. `serve`'s
/// `--awaiting-archive-ttl`), which also sees every backend of this build (usable or not,
/// and why) and may refuse to go on.
pub(crate) async fn open_with(
    home: &Path,
    pool: &PoolSettings,
    readers: Readers,
    configure: impl FnOnce(&mut EngineConfig, &[BackendSlot]) -> anyhow::Result<()>,
) -> anyhow::Result<WorkspaceRuns> {
    let (store, backends) = tokio::join!(open_chosen(home, readers), backends(home, pool));
    let (store, backends): (Arc<dyn Store>, _) = (store?.store, backends?);
    // On a shared store only `serve` claims runs other hosts queued (a short-lived command
    // would take runs and die with them).
    let mut config = EngineConfig {
        default_backend: Some(crownest_backend_process::BACKEND.into()),
        claim_from_queue: false,
        ..EngineConfig::default()
    };
    configure(&mut config, &backends)?;
    let mut builder = with_host_key(WorkspaceRuns::builder(store).config(config), home);
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
    builder.open().await.context("opening the engine")
}

/// The engine `run` drives its run with, and the recovery running beside it.
#[derive(Debug)]
pub(crate) struct ForRun {
    /// An engine with the process backend and the one the run asked for.
    pub(crate) engine: WorkspaceRuns,
    /// Recovery with every backend, in a second engine instance on the same store.
    pub(crate) recovery: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The SQLite store, to close before the process exits (`SqliteStore::close`
    /// checkpoints a long WAL, which the next command would otherwise read back in full
    /// when it opens); `None` on a PostgreSQL store.
    pub(crate) store: Option<SqliteStore>,
}

/// For `run`: recovery is kept off the run's critical path. The run's engine registers only
/// the process backend and the backend the run asked for, and skips recovery; a second
/// engine instance runs recovery concurrently (it leaves this process's run alone: its
/// owner is alive). `run` waits for it before exiting.
///
/// The recovery instance registers the process backend, the run's backend (the same
/// instance, not a second connection), and every other backend **only when the store holds
/// an unfinished run of it** (whose sandbox its sweep must account for). Constructing the
/// Docker backend (a connection, a version negotiation and a ping to dockerd, then a list
/// of containers and volumes) and the WASI backend (a wasmtime engine and its epoch thread)
/// on every `crownest run --backend process` cost more than the rest of a tiny run's
/// recovery; what that skips here (a kept sandbox past its deadline, a warm-pool member of
/// a crashed server, host staging a crash left, all without an unfinished run) is swept by
/// the next command that opens that backend: any other local command (`list`, `get`, `gc`,
/// ...), `serve`, or a `run` on that backend (`docs/engine.md`, "Recovery").
pub(crate) async fn open_for_run(
    home: &Path,
    spec: &crownest_core::RunSpec,
) -> anyhow::Result<ForRun> {
    let backend = spec.backend.as_deref();
    // A malformed template registry is refused whatever the backend (a typo must not pass
    // unnoticed on one backend and fail on another).
    // Read once, here, for every backend this command sets up.
    let registered = crate::templates::Registered::load(home)?;
    let own = registered.process.clone();
    let process = tokio::task::spawn_blocking(move || process_backend(&own));
    // The run's own backend is set up while the store opens (for Docker: the handshake,
    // and the head start's container creation, which goes on in the background).
    let chosen_slot = async {
        match backend {
            None => None,
            Some(name) if name == crownest_backend_process::BACKEND => None,
            Some(name) => Some(
                other_backend_with(
                    name,
                    &registered,
                    &PoolSettings::head_start(spec).unwrap_or_default(),
                )
                .await
                .ok_or_else(|| usage(format!("no backend named {name:?} in this build"))),
            ),
        }
    };
    let (opened, chosen_slot) = tokio::join!(open_chosen(home, Readers::SameHost), chosen_slot);
    // The run's own backend is set up (for Docker, its head start's container may exist):
    // if what follows fails, shut it down, so nothing of it waits for the next sweep.
    let chosen_backend = chosen_slot
        .as_ref()
        .and_then(|slot| slot.as_ref().ok())
        .and_then(|slot| slot.backend.as_ref().ok())
        .cloned();
    let opened = engine_for_run(home, &registered, process, opened, chosen_slot).await;
    if opened.is_err()
        && let Some(backend) = chosen_backend
    {
        backend.shutdown().await;
    }
    opened
}

/// The rest of [`open_for_run`], once the store and the run's own backend are set up.
async fn engine_for_run(
    home: &Path,
    registered: &crate::templates::Registered,
    process: tokio::task::JoinHandle<Result<Arc<dyn SandboxBackend>, String>>,
    opened: anyhow::Result<Opened>,
    chosen_slot: Option<anyhow::Result<BackendSlot>>,
) -> anyhow::Result<ForRun> {
    let registered = registered.clone();
    let Opened { store, sqlite } = opened?;
    let process = process
        .await
        .unwrap_or_else(|e| Err(format!("setting up the backend panicked: {e}")))
        .map_err(|why| anyhow::anyhow!("the process backend cannot be set up here: {why}"))?;
    let key = host_key(home);
    let mut builder = WorkspaceRuns::builder(store.clone())
        .config(EngineConfig {
            default_backend: Some(crownest_backend_process::BACKEND.into()),
            claim_from_queue: false,
            ..EngineConfig::default()
        })
        .backend(process.clone())
        .without_recovery()
        .without_usage_count();
    if let Some(k) = &key {
        builder = builder.host_key(k.clone());
    }
    let mut chosen = None;
    if let Some(slot) = chosen_slot {
        let slot = slot?;
        let name = slot.name;
        let b = slot
            .backend
            .map_err(|why| usage(format!("backend {name} is not usable here: {why}")))?;
        builder = builder.backend(b.clone());
        chosen = Some(b);
    }
    let engine = builder.open().await.context("opening the engine")?;
    let recovery = tokio::spawn(async move {
        // The process backend is shared (its containment probe is the costly part), and so
        // is the run's own backend.
        let mut builder = WorkspaceRuns::builder(store.clone())
            .backend(process)
            .without_usage_count();
        if let Some(k) = key {
            builder = builder.host_key(k);
        }
        let mut registered_names = vec![crownest_backend_process::BACKEND.to_owned()];
        if let Some(b) = chosen {
            registered_names.push(b.name().to_owned());
            builder = builder.backend(b);
        }
        let unfinished = store.list_unfinished().await.context("recovery")?;
        for name in recovery_backends(&registered_names, &unfinished) {
            if let Some(BackendSlot { backend: Ok(b), .. }) =
                other_backend(&name, &registered).await
            {
                builder = builder.backend(b);
            }
        }
        builder.open().await.context("recovery")?;
        Ok(())
    });
    Ok(ForRun {
        engine,
        recovery,
        store: sqlite,
    })
}

/// The backends `run`'s recovery must add to those it has (`registered`): every backend of
/// this build with an unfinished run in the store (see [`open_for_run`]).
fn recovery_backends(
    registered: &[String],
    unfinished: &[crownest_core::RunRecord],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for run in unfinished {
        if !registered.contains(&run.backend) && !out.contains(&run.backend) {
            out.push(run.backend.clone());
        }
    }
    out
}

/// A backend other than `process`, by name, if this build has it.
#[cfg_attr(
    not(any(feature = "docker", feature = "wasm")),
    allow(unused_variables)
)]
async fn other_backend(
    name: &str,
    registered: &crate::templates::Registered,
) -> Option<BackendSlot> {
    other_backend_with(name, registered, &PoolSettings::default()).await
}

/// [`other_backend`], a Docker backend with the pool (or head start) of `pool`.
async fn other_backend_with(
    name: &str,
    registered: &crate::templates::Registered,
    #[cfg_attr(not(feature = "docker"), allow(unused_variables))] pool: &PoolSettings,
) -> Option<BackendSlot> {
    match name {
        #[cfg(feature = "docker")]
        crownest_backend_docker::BACKEND => Some(BackendSlot {
            name: crownest_backend_docker::BACKEND,
            backend: docker_backend(registered, pool).await,
        }),
        #[cfg(feature = "wasm")]
        crownest_backend_wasm::BACKEND => Some(BackendSlot {
            name: crownest_backend_wasm::BACKEND,
            backend: wasm_backend(&registered.wasm),
        }),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crownest_core::{Limits, RunId, RunRecord, RunSpec};

    fn unfinished(backend: &str) -> RunRecord {
        RunRecord::new(
            RunId::new(),
            RunSpec::new(["true"]),
            backend.to_owned(),
            Limits::default(),
            crownest_core::run::RunOwner::current("eng_test"),
        )
    }

    #[test]
    fn run_recovery_adds_exactly_the_backends_with_unfinished_runs() {
        let have = ["process".to_owned(), "docker".to_owned()];
        assert!(recovery_backends(&have, &[]).is_empty());
        let runs = [
            unfinished("process"),
            unfinished("wasm"),
            unfinished("docker"),
            unfinished("wasm"),
        ];
        assert_eq!(recovery_backends(&have, &runs), ["wasm"]);
        assert_eq!(
            recovery_backends(&["process".to_owned()], &runs),
            ["wasm", "docker"]
        );
    }
}
