//! [`DockerBackend`]: the [`SandboxBackend`] over a Docker Engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bollard::Docker;
use crownest_core::{
    Capabilities, Error, IsolationReport, Network, NetworkIsolation, PoolStatus,
    ProcessContainment, Result, RunId, Sandbox, SandboxBackend, SandboxSpec, TemplateInfo,
};

use crate::config::DockerConfig;
use crate::error::DockerError;
use crate::exec::StatCache;
use crate::image::{self, ImageInfo};
use crate::pool::{Claim, Pool};
use crate::sandbox::DockerSandbox;

/// State shared by the backend and its sandboxes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) docker: Docker,
    pub(crate) config: DockerConfig,
    /// Workspaces are directories of the work root bound at `/workspace` (`place.rs`);
    /// cleared for good when the daemon cannot see them (its create refuses the bind).
    pub(crate) binds: std::sync::atomic::AtomicBool,
    /// The work root's path as the daemon gets it for binds (`place::bind_base`).
    pub(crate) bind_base: Option<std::path::PathBuf>,
    pub(crate) stat_cache: StatCache,
    /// The private work root of host staging, opened at first use.
    pub(crate) root: std::sync::Mutex<Option<crownest_core::hostdir::WorkRoot>>,
    /// Interpreter facts per image id (see `interpreters.rs`).
    pub(crate) interpreters: Mutex<HashMap<String, std::collections::BTreeMap<String, String>>>,
    /// The warm pool (see `pool.rs`).
    pub(crate) pool: Pool,
    /// Sandboxes being removed in the background (see `cleanup::Removals`).
    pub(crate) removals: crate::cleanup::Removals,
}

impl Shared {
    /// The host staging root (`config.work_dir`), opened and checked on first use: an
    /// unsafe root fails the runs that need it, naming it.
    pub(crate) fn root(&self) -> crownest_core::Result<crownest_core::hostdir::WorkRoot> {
        let mut slot = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(root) = slot.as_ref() {
            return Ok(root.clone());
        }
        let root = crownest_core::hostdir::WorkRoot::open(&self.config.work_dir)?;
        *slot = Some(root.clone());
        Ok(root)
    }

    /// The work root to make a bound workspace in, and its path for the daemon, when
    /// workspaces are bound.
    pub(crate) fn bind_root(
        &self,
    ) -> Option<(crownest_core::hostdir::WorkRoot, std::path::PathBuf)> {
        if !self.binds.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some((self.root().ok()?, self.bind_base.clone()?))
    }

    /// The image of a template, with its interpreters measured (once per image id).
    pub(crate) async fn image(&self, reference: &str) -> Result<ImageInfo, DockerError> {
        let mut image = image::inspect(&self.docker, reference).await?;
        image.interpreters = match crate::interpreters::facts(self, &image).await {
            Ok(f) => f,
            // The run can go on; the evidence says what could not be measured.
            Err(e) => std::collections::BTreeMap::from([(
                "interpreters.unknown".to_owned(),
                Error::from(e).chain(),
            )]),
        };
        Ok(image)
    }
}

/// Sandboxes as hardened Docker containers (see the crate docs).
#[derive(Debug, Clone)]
pub struct DockerBackend {
    shared: Arc<Shared>,
}

/// The API version (`major`, `minor`) of the engine listening on the unix socket `path`, from
/// the `Api-Version` header of its `GET /_ping` answer; `None` when it does not answer 200
/// with one within 5 s (the caller then negotiates through bollard, which reports the error).
async fn ping_version(path: &str) -> Option<(usize, usize)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut socket = tokio::net::UnixStream::connect(path).await.ok()?;
        socket
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .ok()??;
    api_version_of(&String::from_utf8_lossy(&answer))
}

/// The `Api-Version` of a `200` HTTP answer's headers.
fn api_version_of(answer: &str) -> Option<(usize, usize)> {
    let mut lines = answer.split("\r\n");
    if lines.next()?.split(' ').nth(1) != Some("200") {
        return None;
    }
    lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("api-version"))
        .and_then(|(_, v)| {
            let (major, minor) = v.trim().split_once('.')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
}

impl DockerBackend {
    /// True when this backend places workspaces from the host: a directory of its private
    /// work root, bound at `/workspace`, into which the checked tree is moved
    /// ([`DockerConfig::with_host_placement`]: allowed, this process is root, the engine is
    /// the local one, and no one but root can change what the work root's path resolves
    /// to). Otherwise (and for good once the daemon refused a bind) the workspace is an
    /// anonymous volume that the launcher fills.
    pub fn places_workspaces_from_host(&self) -> bool {
        self.shared.binds.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connects to the engine of `config.host` (or the local defaults), negotiates the API
    /// version (the engine here speaks 1.41; bollard defaults to newer) and pings it: for a
    /// unix socket, one `/_ping` does both (its `Api-Version` header).
    ///
    /// A missing image is not an error here: [`SandboxBackend::templates`] reports it
    /// unavailable with the reason, and `create` fails naming `scripts/build-docker-image.sh`.
    ///
    /// A warm pool ([`DockerConfig::with_pool`]) of a template the configuration does not
    /// serve is `Error::InvalidSpec` (field `pool`); a configured pool starts filling in the
    /// background.
    pub async fn connect(config: DockerConfig) -> Result<Self> {
        if let Some(t) = config
            .pool
            .iter()
            .find(|(t, n)| **n > 0 && !config.templates.contains_key(*t))
            .map(|(t, _)| t)
        {
            return Err(Error::invalid(
                "pool",
                format!(
                    "a warm pool of template {t:?}, which the docker backend does not serve ({})",
                    config
                        .templates
                        .keys()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let endpoint = config.host.clone().unwrap_or_else(|| {
            std::env::var("DOCKER_HOST")
                .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
        });
        let connect_err = |source| DockerError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        // bollard's timeout bounds a request until its response headers arrive: a whole
        // upload, but not a streamed body (attach and wait answer at once).
        let timeout = config
            .request_timeout
            .max(std::time::Duration::from_secs(1));
        // A local engine: its API version from one `/_ping` (as the docker CLI negotiates),
        // not from `/version`, which makes the daemon run `runc --version` and the like
        // (10–20 ms of every command here).
        let pinged = match endpoint.strip_prefix("unix://") {
            Some(path) => ping_version(path).await.map(|v| (path, v)),
            None => None,
        };
        let docker = match pinged {
            Some((path, (major, minor))) => {
                let ours = bollard::API_DEFAULT_VERSION;
                let version = if (major, minor) < (ours.major_version, ours.minor_version) {
                    bollard::ClientVersion {
                        major_version: major,
                        minor_version: minor,
                    }
                } else {
                    *ours
                };
                Docker::connect_with_unix(path, timeout.as_secs(), &version)
                    .map_err(connect_err)?
                    .with_timeout(timeout)
            }
            None => {
                let docker = match &config.host {
                    Some(host) => Docker::connect_with_host(host),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(connect_err)?
                .with_timeout(timeout);
                let docker = docker.negotiate_version().await.map_err(connect_err)?;
                docker.ping().await.map_err(connect_err)?;
                docker
            }
        };
        // Binds need the work root now: opened (and made) here, and kept.
        let root = (config.host_placement && crate::place::possible(config.host.as_deref()))
            .then(|| crownest_core::hostdir::WorkRoot::open(&config.work_dir).ok())
            .flatten();
        let bind_base = root.as_ref().and_then(crate::place::bind_base);
        let shared = Arc::new(Shared {
            docker,
            binds: std::sync::atomic::AtomicBool::new(bind_base.is_some()),
            bind_base,
            pool: Pool::new(&config),
            config,
            stat_cache: Mutex::new(HashMap::new()),
            root: Mutex::new(root),
            interpreters: Mutex::new(HashMap::new()),
            removals: crate::cleanup::Removals::default(),
        });
        // The warm pool fills in the background; runs that come first get fresh sandboxes.
        if shared.pool.is_configured() {
            shared.pool.fill(&shared);
        }
        Ok(Self { shared })
    }

    /// The warm pool sandboxes on this Docker host, of every process (grouped by owner and
    /// template): what another process's pool costs here, seen from outside it.
    pub async fn pools_on_host(&self) -> Result<Vec<crate::HostPool>> {
        Ok(crate::pool::on_host(&self.shared.docker).await?)
    }

    /// Drains the warm pool (part of [`SandboxBackend::shutdown`]).
    pub async fn drain_pool(&self) {
        self.shared.pool.drain(&self.shared).await;
    }

    /// Waits for the sandboxes being removed in the background
    /// ([`DockerConfig::with_background_removal`]) to be gone (part of
    /// [`SandboxBackend::shutdown`]); returns how many removals failed (each logged; the
    /// next sweep after this process exits removes what they left).
    pub async fn wait_removals(&self) -> usize {
        self.shared.removals.wait().await
    }

    /// The configuration in use.
    pub fn config(&self) -> &DockerConfig {
        &self.shared.config
    }

    /// The underlying bollard client (for diagnostics and tests).
    pub fn docker(&self) -> &Docker {
        &self.shared.docker
    }

    /// The image of a template, with its interpreters measured (once per image id).
    async fn image(&self, reference: &str) -> Result<ImageInfo, DockerError> {
        self.shared.image(reference).await
    }
}

/// The isolation one sandbox enforces (copied into the Evidence Bundle).
pub(crate) fn isolation_report(
    config: &DockerConfig,
    spec: &SandboxSpec,
    image: &ImageInfo,
    pooled: bool,
    bound: bool,
) -> IsolationReport {
    let mut details = std::collections::BTreeMap::new();
    details.insert("imageId".into(), image.id.clone());
    details.insert("readOnlyRoot".into(), "true".into());
    details.insert("capDrop".into(), "ALL".into());
    details.insert("noNewPrivileges".into(), "true".into());
    details.insert("seccomp".into(), "docker default".into());
    details.insert("privileged".into(), "false".into());
    details.insert(
        "init".into(),
        "the launcher (sh) is pid 1: it reaps and passes SIGTERM to every process of the sandbox user".into(),
    );
    details.insert(
        "tmpfs".into(),
        format!("/tmp size={}", config.tmp_size_bytes),
    );
    details.insert(
        "workspace".into(),
        if bound {
            "a directory of the private work root made for this sandbox, bind-mounted at \
             /workspace (the only host path mounted), deleted once the container stopped"
        } else {
            "anonymous docker volume, removed with the container (no host path mounted)"
        }
        .into(),
    );
    details.insert(
        "memorySwapBytes".into(),
        spec.limits.memory_bytes.to_string(),
    );
    details.insert(
        "ulimits".into(),
        format!("nofile={} core=0", spec.limits.open_files),
    );
    details.insert("logDriver".into(), "none (output is attached)".into());
    IsolationReport {
        backend: crate::BACKEND.into(),
        network: match spec.network {
            Network::None => NetworkIsolation::None,
            Network::Enabled => NetworkIsolation::Enabled,
        },
        memory_bytes: Some(spec.limits.memory_bytes),
        pids: Some(spec.limits.pids),
        process_containment: ProcessContainment::Container,
        user: Some(config.user.clone()),
        security_boundary: true,
        pooled,
        details,
        not_enforced: Vec::new(),
    }
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &str {
        crate::BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            network_isolation: true,
            network_access: true,
            memory_limit: true,
            pids_limit: true,
            filesystem_isolation: true,
            process_tree_kill: true,
            keep_sandbox: true,
            non_root: true,
            security_boundary: true,
            // The launcher reports the command's signal death as `128 + n`, like
            // `exit(128 + n)`.
            exit_signal: false,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let mut list = Vec::with_capacity(self.shared.config.templates.len());
        for (name, reference) in &self.shared.config.templates {
            list.push(match self.image(reference).await {
                Ok(image) => TemplateInfo {
                    name: name.clone(),
                    available: true,
                    reason: None,
                    identity: Some(image.identity()),
                },
                Err(e) => TemplateInfo {
                    name: name.clone(),
                    available: false,
                    reason: Some(
                        Error::from(e)
                            .chain()
                            .trim_start_matches("backend docker failed: ")
                            .to_owned(),
                    ),
                    identity: None,
                },
            });
        }
        Ok(list)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let templates = &self.shared.config.templates;
        let Some(reference) = templates.get(&spec.template) else {
            return Err(Error::invalid(
                "template",
                format!(
                    "unknown template {:?} (the docker backend serves {})",
                    spec.template,
                    templates
                        .keys()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if self.shared.config.uid_gid().is_none_or(|(u, _)| u == 0) {
            return Err(Error::invalid(
                "user",
                "the docker backend never runs commands as root",
            ));
        }
        let image = self.image(reference).await?;
        let sandbox = match self.shared.pool.claim(&self.shared, spec, &image.id).await {
            Claim::Hit(warm) => DockerSandbox::adopt(self.shared.clone(), spec, image, *warm),
            Claim::Miss => DockerSandbox::create(self.shared.clone(), spec, image).await?,
        };
        Ok(Box::new(sandbox))
    }

    fn prepare_root(&self) -> Option<crownest_core::hostdir::WorkRoot> {
        self.shared.root().ok()
    }

    fn pools(&self) -> Vec<PoolStatus> {
        self.shared.pool.status()
    }

    async fn shutdown(&self) {
        // Host staging trees are deleted beside the commands (`sandbox.rs`): wait for
        // those too.
        let staging = async {
            if let Ok(root) = self.shared.root() {
                root.removals_settled().await;
            }
        };
        tokio::join!(self.drain_pool(), self.wait_removals(), staging);
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let root = self.shared.root()?;
        let swept = crate::sweep::sweep(&self.shared.docker, &root.proc_path(), live).await?;
        // Host staging directories a crash left (marked, like every host-directory
        // sandbox): the one host-directory sweep. They are not sandboxes, so they are not
        // reported.
        let live = live.to_vec();
        tokio::task::spawn_blocking(move || {
            crownest_core::hostdir::sweep(&root, "docker", &live, &mut |_| {})
        })
        .await
        .map_err(|e| Error::backend("docker", format!("the staging sweep task failed: {e}")))??;
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::api_version_of;

    #[test]
    fn the_api_version_is_read_from_the_ping_headers() {
        let ok = "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(api_version_of(ok), Some((1, 41)));
        let lower = "HTTP/1.1 200 OK\r\napi-version:1.51\r\n\r\nOK";
        assert_eq!(api_version_of(lower), Some((1, 51)));
        for bad in [
            "HTTP/1.0 500 Internal Server Error\r\nApi-Version: 1.41\r\n\r\n",
            "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nApi-Version: 1.41",
            "HTTP/1.0 200 OK\r\nApi-Version: one\r\n\r\n",
            "",
        ] {
            assert_eq!(api_version_of(bad), None, "{bad:?}");
        }
    }
}
