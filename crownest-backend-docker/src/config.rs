//! [`DockerConfig`]: where the engine is, which image is the template, and the hardening knobs.

use std::path::PathBuf;
use std::time::Duration;

/// The default image of the `python-node` template, built by `scripts/build-docker-image.sh`.
pub const DEFAULT_IMAGE: &str = "crownest/python-node:latest";

/// How to reach Docker and how to shape containers.
///
/// `DockerConfig::default()` is deny-by-default:
///
/// | field | default |
/// |---|---|
/// | `host` | `None`: `$DOCKER_HOST`, else the local socket `/var/run/docker.sock` |
/// | `image` | `crownest/python-node:latest` (the `python-node` template) |
/// | `template` | `python-node` |
/// | `user` | `10001:10001` (the image's `crownest` user; never root) |
/// | `work_dir` | [`WorkRoot::default_path`](crownest_core::hostdir::WorkRoot::default_path)`("docker")`: `$XDG_RUNTIME_DIR/crownest/docker`, else `/dev/shm/crownest-<euid>/docker` (tmpfs), else `<temp dir>/crownest-<euid>/docker` (host staging for archives and artifacts; a private work root, refused when another user could change it) |
/// | `tmp_size_bytes` | 64 MiB (size of the `/tmp` tmpfs; counts against the memory limit) |
/// | `request_timeout` | 600 s (per Docker API request, including a whole archive upload) |
/// | `enabled_network_mode` | `bridge` (used only when a run asks for `network: enabled`) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://...`); `None` = local defaults.
    pub host: Option<String>,
    /// Image reference of the template.
    pub image: String,
    /// Template name served by this backend.
    pub template: String,
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
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            image: DEFAULT_IMAGE.to_owned(),
            template: "python-node".to_owned(),
            user: "10001:10001".to_owned(),
            work_dir: crownest_core::hostdir::WorkRoot::default_path(crate::BACKEND),
            tmp_size_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            enabled_network_mode: "bridge".to_owned(),
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

    /// Sets the template image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
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
