//! [`WasmConfig`]: where the modules, the compiled-module cache and the workspaces live,
//! and the templates a host application registers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::WasmTemplate;

/// Configuration of a [`crate::WasmBackend`].
///
/// Defaults ([`WasmConfig::default`]):
///
/// | field | default |
/// |---|---|
/// | `modules_dir` | `${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}/wasm` (where `scripts/fetch-wasm-modules.sh` puts them) |
/// | `cache_dir` | `<modules_dir>/compiled` |
/// | `templates` | none besides `python-node` (the modules of `modules.lock` in `modules_dir`); [`WasmConfig::with_template`] adds one: a name → per interpreter a module file and its pinned sha256 |
/// | `workspace_root` | [`WorkRoot::default_path`](crownest_core::hostdir::WorkRoot::default_path)`("wasm")`: `$XDG_RUNTIME_DIR/crownest/wasm`, else `/dev/shm/crownest-<euid>/wasm` (tmpfs), else `<temp dir>/crownest-<euid>/wasm`; a private work root, refused when another user could change it |
/// | `removal_wait` | 1 s |
/// | `epoch_tick` | 10 ms |
/// | `max_instances` / `max_tables` / `max_memories` | 4 / 16 / 4 |
/// | `max_table_elements` | 1 000 000 |
/// | `deadline_margin` | 5 s |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmConfig {
    /// Directory holding `python-3.12.0.wasm` and `quickjs.wasm`, verified against the
    /// sha256 pinned in `modules.lock` (compiled into this crate).
    pub modules_dir: PathBuf,
    /// Templates of the host application's own: name → its modules ([`WasmTemplate`]). A
    /// name given here replaces `python-node`.
    pub templates: BTreeMap<String, WasmTemplate>,
    /// Directory of the compiled-module cache (`<sha256>-<engine hash>.cwasm`). Only files
    /// this crate wrote are ever loaded from it (see [`crate::compile`]).
    pub cache_dir: PathBuf,
    /// Parent of the per-run sandbox directories (`<root>/<run>-<rand>/workspace`). Put it on
    /// tmpfs when the workspaces fit.
    pub workspace_root: PathBuf,
    /// Period of the epoch ticker thread: how often running guest code checks whether it
    /// must yield or stop. A stop takes effect within about one tick.
    pub epoch_tick: Duration,
    /// Instances a guest may create (a WASI command needs one).
    pub max_instances: usize,
    /// Tables a guest may create.
    pub max_tables: usize,
    /// Linear memories a guest may create.
    pub max_memories: usize,
    /// Elements of one table.
    pub max_table_elements: usize,
    /// The backend's own backstop: `exec` stops the guest by itself at
    /// `limits.timeoutMs + limits.killGraceMs + deadline_margin`, in case nobody signals it
    /// (the engine's kill ladder normally ends it first).
    pub deadline_margin: Duration,
    /// How long `destroy` waits for the deletion of the sandbox's files (the directory is
    /// unreachable at once; the deletion goes on in the background after this, and the
    /// evidence says `removalPending`). Zero: never waited for in `destroy`; the run's
    /// terminal commit overlaps the deletion, and the backend's `shutdown` waits for it.
    pub removal_wait: Duration,
}

impl WasmConfig {
    /// `${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}`, the fetch script's cache root.
    pub fn default_cache_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("CROWNEST_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache").join("crownest")
    }

    /// A configuration reading modules from `modules_dir` (other fields default; the
    /// compiled cache goes to `<modules_dir>/compiled`).
    pub fn with_modules_dir(modules_dir: impl Into<PathBuf>) -> Self {
        let modules_dir = modules_dir.into();
        Self {
            cache_dir: modules_dir.join("compiled"),
            modules_dir,
            ..Self::default()
        }
    }

    /// Serves the template `name` with `template`'s modules (files the host application
    /// pins by sha256), replacing a template of that name. The modules are verified like
    /// the built-in ones and compiled into the same cache; a missing or different file makes
    /// only this template unavailable, with a reason naming the file and the digest
    /// expected.
    pub fn with_template(mut self, name: impl Into<String>, template: WasmTemplate) -> Self {
        self.templates.insert(name.into(), template);
        self
    }

    /// Sets the compiled-module cache directory.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// Sets the parent directory of the sandbox workspaces.
    pub fn with_workspace_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace_root = dir.into();
        self
    }
}

impl Default for WasmConfig {
    fn default() -> Self {
        let modules_dir = Self::default_cache_root().join("wasm");
        Self {
            cache_dir: modules_dir.join("compiled"),
            modules_dir,
            templates: BTreeMap::new(),
            workspace_root: crownest_core::hostdir::WorkRoot::default_path(crate::BACKEND),
            epoch_tick: Duration::from_millis(10),
            max_instances: 4,
            max_tables: 16,
            max_memories: 4,
            max_table_elements: 1_000_000,
            deadline_margin: Duration::from_secs(5),
            removal_wait: Duration::from_secs(1),
        }
    }
}
