//! [`ProcessBackend`]: the [`SandboxBackend`] (the containment probe and its one re-probe,
//! templates, create, the sweep). The sandbox is in `sandbox.rs`, spawning its command in
//! `launch.rs`, its isolation report in `isolation.rs`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crownest_core::hostdir::{Marker, SandboxDir, WorkRoot};
use crownest_core::{
    Capabilities, Error, Result, RunId, Sandbox, SandboxBackend, SandboxSpec, TemplateInfo,
};
use tokio::sync::OnceCell;

use crate::BACKEND;
use crate::config::ProcessConfig;
use crate::containment::{self, Applied, ProcessRecord};
use crate::error::ProcessError;
use crate::netns::SpareNetns;
use crate::probe_cache::{self, MemCache};
use crate::sandbox::ProcessSandbox;
use crate::shared::{ProbeState, Shared};
use crate::spawn::HookMode;
use crate::template::{self, Resolved};

/// Runs commands as host processes. **Not a security boundary**: see the crate docs.
///
/// Cheap to clone. Construct with [`ProcessBackend::new`], which probes the containment
/// once per boot, user, kernel and configuration: the result is cached in memory and in
/// `<root>/.containment-probe.json` (see the crate docs).
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    inner: Arc<Shared>,
}

impl ProcessBackend {
    /// Creates the backend: makes the sandbox root (mode 0700, must be owned by this user)
    /// and probes which containment works here ([`crate::Containment`]). A containment
    /// asked for explicitly that does not work is an error; `Auto` always succeeds (at
    /// worst with the process group).
    pub fn new(config: ProcessConfig) -> Result<Self> {
        let root = WorkRoot::open(&config.root)?;
        let key = probe_cache::Key::current(&config);
        let (probe, source) = probe_cache::lookup(MemCache::global(), &config.root, &key, || {
            containment::probe(&config)
        })
        .map_err(ProcessError::Containment)?;
        if source == probe_cache::Source::Fresh && !probe.notes.is_empty() {
            tracing::info!(
                containment = probe.applied.name(),
                notes = %probe.notes.join("; "),
                "process backend: stronger containment unavailable"
            );
        }
        let netns = Arc::new(SpareNetns::default());
        if spare_netns_helps(&probe.applied) {
            netns.refill();
        }
        Ok(Self {
            inner: Arc::new(Shared {
                netns,
                config,
                root,
                probe: Mutex::new(ProbeState {
                    current: probe,
                    cached: source.cached(),
                    reprobed: false,
                }),
                reprobe: tokio::sync::Mutex::new(()),
                templates: OnceCell::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ProcessConfig {
        &self.inner.config
    }

    /// The containment in force: `pid_namespace`, `cgroup` or `process_group`.
    pub fn containment(&self) -> &'static str {
        self.inner.probe().applied.name()
    }

    /// Why stronger containments were not used (empty when the first choice worked).
    pub fn containment_notes(&self) -> Vec<String> {
        self.inner.probe().notes.clone()
    }

    /// Every template, resolved once.
    async fn resolved(&self) -> &std::collections::BTreeMap<String, Resolved> {
        self.inner
            .templates
            .get_or_init(|| async {
                let mut out = std::collections::BTreeMap::new();
                for (name, path) in self.inner.config.all_templates() {
                    let resolved = template::resolve(&name, &path, &self.inner.config.root).await;
                    out.insert(name, resolved);
                }
                out
            })
            .await
    }
}

#[async_trait]
impl SandboxBackend for ProcessBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let probe = self.inner.probe();
        let applied = &probe.applied;
        Capabilities {
            network_isolation: matches!(applied, Applied::PidNamespace { network: true, .. }),
            network_access: true,
            memory_limit: false,
            pids_limit: false,
            filesystem_isolation: false,
            process_tree_kill: applied.kills_whole_tree(),
            keep_sandbox: true,
            non_root: !rustix::process::geteuid().is_root(),
            security_boundary: false,
            exit_signal: true,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(self
            .resolved()
            .await
            .values()
            .map(|r| r.info.clone())
            .collect())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let all = self.resolved().await;
        let Some(resolved) = all.get(&spec.template) else {
            return Err(Error::invalid(
                "template",
                format!(
                    "unknown template {:?}; the process backend offers {}",
                    spec.template,
                    all.keys()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if !resolved.info.available {
            return Err(Error::invalid(
                "template",
                format!(
                    "{} is unavailable on this host: {}",
                    spec.template,
                    resolved.info.reason.as_deref().unwrap_or("unknown reason")
                ),
            ));
        }
        if spec.network == crownest_core::Network::None
            && spare_netns_helps(&self.inner.probe().applied)
        {
            // Made while the sandbox is set up, for its command (a no-op when one is ready).
            self.inner.netns.refill();
        }
        let identity = resolved.identity();
        let marker = Marker::new(BACKEND, &spec.run_id, &spec.instance, spec.owner.clone());
        let root = self.inner.root.clone();
        let made = {
            let marker = marker.clone();
            tokio::task::spawn_blocking(move || {
                SandboxDir::create(&root, &marker, |d| {
                    d.mkdir("tmp", 0o700)?;
                    d.mkdir("workspace", 0o755)
                })
            })
            .await
            .map_err(|e| Error::from(ProcessError::Task(e.to_string())))??
        };
        Ok(Box::new(ProcessSandbox::new(
            made,
            self.inner.clone(),
            spec.clone(),
            identity,
            marker,
        )))
    }

    fn prepare_root(&self) -> Option<crownest_core::hostdir::WorkRoot> {
        Some(self.inner.root.clone())
    }

    /// Waits for the deletions of sandbox directories still running in the background
    /// (`removalPending` in their evidence, see [`ProcessConfig::removal_wait`]).
    async fn shutdown(&self) {
        self.inner.root.removals_settled().await;
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let root = self.inner.root.clone();
        let live = live.to_vec();
        tokio::task::spawn_blocking(move || {
            crownest_core::hostdir::sweep(&root, BACKEND, &live, &mut |m| {
                if let Some(p) = processes(m) {
                    p.kill_leftovers();
                }
            })
        })
        .await
        .map_err(|e| Error::from(ProcessError::Task(e.to_string())))?
    }
}

/// The processes a sandbox's command last ran, as recorded in its marker's `state`.
fn processes(marker: &Marker) -> Option<ProcessRecord> {
    serde_json::from_value(marker.state.get("processes")?.clone()).ok()
}

/// Whether a spare network namespace can serve spawns under `applied` (`netns.rs`): those
/// of its commands without network ([`HookMode::joins_spare_netns`]).
pub(crate) fn spare_netns_helps(applied: &Applied) -> bool {
    match *applied {
        Applied::PidNamespace { user, network } => {
            HookMode::Namespace { user, network }.joins_spare_netns()
        }
        _ => false,
    }
}
