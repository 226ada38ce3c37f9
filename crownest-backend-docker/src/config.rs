//! [`DockerConfig`]: where the engine is, which image each template is, and the hardening
//! knobs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crownest_core::Limits;

/// The default image of the `python-node` template, built by `scripts/build-docker-image.sh`.
pub const DEFAULT_IMAGE: &str = "crownest/python-node:latest";
/// The template every backend offers.
pub const PYTHON_NODE: &str = "python-node";

/// How to reach Docker and how to shape containers.
///
/// `DockerConfig::default()` is deny-by-default:
///
/// | field | default |
/// |---|---|
/// | `host` | `None`: `$DOCKER_HOST`, else the local socket `/var/run/docker.sock` |
/// | `templates` | `python-node` → `crownest/python-node:latest`; a host application adds its own with [`DockerConfig::with_template`] |
/// | `user` | `10001:10001` (the image's `crownest` user; never root) |
/// | `work_dir` | [`WorkRoot::default_path`](crownest_core::hostdir::WorkRoot::default_path)`("docker")`: `$XDG_RUNTIME_DIR/crownest/docker`, else `/dev/shm/crownest-<euid>/docker` (tmpfs), else `<temp dir>/crownest-<euid>/docker` (host staging for archives and artifacts; a private work root, refused when another user could change it) |
/// | `tmp_size_bytes` | 64 MiB (size of the `/tmp` tmpfs; counts against the memory limit) |
/// | `request_timeout` | 600 s (per Docker API request, including a whole archive upload) |
/// | `enabled_network_mode` | `bridge` (used only when a run asks for `network: enabled`) |
/// | `pool` | empty: no warm pool (see [`DockerConfig::with_pool`]) |
/// | `pool_limits` | [`Limits::default()`]: the limits warm pool sandboxes are made with |
/// | `head_start` | `false`: pools are refilled (see [`DockerConfig::with_head_start`]) |
/// | `background_removal` | `false`: `destroy()` removes the container and verifies it is gone before it returns (see [`DockerConfig::with_background_removal`]) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://...`); `None` = local defaults.
    pub host: Option<String>,
    /// The templates served: name → image reference. An image that is missing makes its
    /// template unavailable (reported by `templates()`), never the backend unusable.
    pub templates: BTreeMap<String, String>,
    /// `uid:gid` the command runs as (numeric; must not be 0).
    pub user: String,
    /// Host directory for private staging (extracted archives, downloaded artifacts).
    pub work_dir: PathBuf,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_size_bytes: u64,
    /// Timeout of one Docker API request.
    pub request_timeout: Duration,
    /// Docker network mode used for `network: enabled`.
    pub enabled_network_mode: String,
    /// Warm pool size per template: that many sandboxes are kept created and started,
    /// each taken by one run (whose spec fits, see `pool.rs`) and destroyed after it. Only
    /// a long-lived engine (a server) gains from one; 0 or absent = none.
    pub pool: BTreeMap<String, usize>,
    /// The limits pool sandboxes are made with: a run takes one only when its memory, pids
    /// and open-files limits are these (set them to the engine's defaults).
    pub pool_limits: Limits,
    /// The pools are a head start: filled once as the backend connects, never refilled,
    /// and a run that fits waits for a member still being created (see
    /// [`DockerConfig::with_head_start`]).
    pub head_start: bool,
    /// Remove the container of a sandbox whose command ran to its end in the background:
    /// `destroy()` returns [`Destroyed::RemovalPending`](crownest_core::Destroyed) at once
    /// (see [`DockerConfig::with_background_removal`]).
    pub background_removal: bool,
    /// Bind a directory of the private work root at `/workspace` and move the checked tree
    /// into it from the host when this process can (root, the local engine's socket, a
    /// work root whose ancestors only root can change; else an anonymous volume that the
    /// launcher fills). See [`DockerConfig::with_host_placement`].
    pub host_placement: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            templates: BTreeMap::from([(PYTHON_NODE.to_owned(), DEFAULT_IMAGE.to_owned())]),
            user: "10001:10001".to_owned(),
            work_dir: crownest_core::hostdir::WorkRoot::default_path(crate::BACKEND),
            tmp_size_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            enabled_network_mode: "bridge".to_owned(),
            pool: BTreeMap::new(),
            pool_limits: Limits::default(),
            head_start: false,
            background_removal: false,
            host_placement: true,
        }
    }
}

impl DockerConfig {
    /// The defaults (see the type docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the Docker endpoint.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the image of the `python-node` template.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.templates.insert(PYTHON_NODE.to_owned(), image.into());
        self
    }

    /// Serves `name` from `image` (an image the host built or loaded; nothing is pulled),
    /// replacing a template of that name. The image should keep the `python-node`
    /// contract's shape: a non-root `uid:gid` matching [`DockerConfig::user`] can write
    /// `/workspace`, and `/bin/sh` exists (see `docs/images.md`).
    pub fn with_template(mut self, name: impl Into<String>, image: impl Into<String>) -> Self {
        self.templates.insert(name.into(), image.into());
        self
    }

    /// Keeps `size` sandboxes of `template` created and started ahead of their runs (a
    /// warm pool; 0 = none). The backend fills it from [`DockerBackend::connect`](crate::DockerBackend::connect)
    /// on and drains it at [`SandboxBackend::shutdown`](crownest_core::SandboxBackend::shutdown).
    pub fn with_pool(mut self, template: impl Into<String>, size: usize) -> Self {
        self.pool.insert(template.into(), size);
        self
    }

    /// Starts creating one sandbox of `template` as the backend connects, for a single run
    /// about to come (what `crownest run --backend docker` does while it stores the
    /// archive and opens the engine): a pool of one, made with
    /// [`DockerConfig::pool_limits`] (set them to the run's), that is never refilled; a
    /// run that fits and comes while the sandbox is still being created waits for it
    /// instead of creating another. The container's create and start (most of a tiny
    /// run's time) then overlap the caller's own work. A run that does not fit gets a fresh
    /// sandbox, and the unused one is removed at
    /// [`SandboxBackend::shutdown`](crownest_core::SandboxBackend::shutdown). Replaces the
    /// pool sizes set before.
    pub fn with_head_start(mut self, template: impl Into<String>) -> Self {
        self.pool = BTreeMap::from([(template.into(), 1)]);
        self.head_start = true;
        self
    }

    /// Sets the limits pool sandboxes are made with (the engine's default limits, so that
    /// runs that do not override them fit).
    pub fn with_pool_limits(mut self, limits: Limits) -> Self {
        self.pool_limits = limits;
        self
    }

    /// Removes sandboxes in the background once their command has ended (`true`), instead
    /// of before `destroy()` returns (`false`, the default).
    ///
    /// Only a sandbox whose container Docker reported stopped after its command (the
    /// launcher exited: no process of the sandbox runs; its network was `none` or a
    /// bridge nothing listens on any more) is removed this way: `destroy()` then returns
    /// [`Destroyed::RemovalPending`](crownest_core::Destroyed) at once (the evidence says
    /// `destroyed: true, removalPending: true`), and a background task removes the
    /// container with its workspace volume and verifies both are gone, retrying a failed
    /// removal. [`SandboxBackend::shutdown`](crownest_core::SandboxBackend::shutdown) waits
    /// for those tasks. A crash leaves a stopped container labelled with its dead owner,
    /// which the next sweep removes (the one orphan rule). Any other sandbox (never run,
    /// still running, its end not observed) is removed before `destroy()` returns, as
    /// without this setting.
    pub fn with_background_removal(mut self, on: bool) -> Self {
        self.background_removal = on;
        self
    }

    /// Whether the workspace may be placed from the host (default `true`; it happens only
    /// where it can: this process is root and talks to the local engine over its unix
    /// socket, and every ancestor of the work root is root's and not writable by others,
    /// or sticky): a directory made for the sandbox in the private work root is
    /// bind-mounted at `/workspace` and the checked tree is moved into it (`place.rs`).
    /// It spares every run the `dd` and `tar` the launcher would start in the fresh
    /// container (~14 ms of a tiny run on fuse-overlayfs) and the workspace volume's
    /// create and removal in the daemon; the result is the same tree, owned by the sandbox
    /// user. `false`: an anonymous volume, always filled through the launcher
    /// (`launcher.rs`, step 0).
    pub fn with_host_placement(mut self, on: bool) -> Self {
        self.host_placement = on;
        self
    }

    /// Sets the host staging directory.
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = dir.into();
        self
    }

    /// Sets the size of the `/tmp` tmpfs.
    pub fn with_tmp_size_bytes(mut self, bytes: u64) -> Self {
        self.tmp_size_bytes = bytes;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The numeric uid and gid of [`DockerConfig::user`], when it is `uid:gid` or `uid`.
    pub(crate) fn uid_gid(&self) -> Option<(u64, u64)> {
        let (u, g) = self
            .user
            .split_once(':')
            .unwrap_or((&self.user, &self.user));
        Some((u.parse().ok()?, g.parse().ok()?))
    }
}
