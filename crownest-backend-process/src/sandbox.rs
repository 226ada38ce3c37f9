//! [`ProcessSandbox`]: one sandbox directory and the command running in it (materialize,
//! exec, signal, artifacts, keep, destroy).

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crownest_core::archive::{ExtractPolicy, ExtractSummary};
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact};
use crownest_core::backend::{ArchiveSource, ProgressFn};
use crownest_core::hostdir::{Marker, Removal, SandboxDir};
use crownest_core::{
    Destroyed, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus, IsolationReport, KillSignal,
    Network, NetworkIsolation, OutputStream, Result, Sandbox, SandboxSpec, TemplateIdentity,
    Timestamp,
};
use tokio::sync::watch;

use crate::BACKEND;
use crate::containment::{Applied, Probe, Tree};
use crate::error::ProcessError;
use crate::output::{PumpEnd, pump};
use crate::privilege::HostPrivilege;
use crate::report::read_available;
use crate::shared::Shared;
use crate::spawn::RlimitPlan;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) marker: Marker,
    pub(crate) tree: Option<Arc<Tree>>,
    /// Set by the first successful `destroy`.
    pub(crate) destroyed: Option<Destroyed>,
    pub(crate) execs: u64,
    /// The containment probe this sandbox uses (the backend's at creation; replaced when a
    /// spawn failure made the backend re-probe).
    pub(crate) probe: Arc<Probe>,
    /// Set when that happened (reported in the isolation details).
    pub(crate) reprobe_note: Option<String>,
    /// What the last spawned command held over the host (`None` before the first exec).
    pub(crate) privilege: Option<HostPrivilege>,
}

/// One sandbox: a directory `<root>/<run id>-<random>/` with `workspace/` (the command's
/// `/workspace`, also its `HOME`), `tmp/` (its `TMPDIR`) and a marker file.
#[derive(Debug)]
pub struct ProcessSandbox {
    pub(crate) id: String,
    /// The sandbox directory, opened once; everything goes through its descriptor.
    pub(crate) dir: SandboxDir,
    /// Where it is on the host (the command's `HOME`/`TMPDIR` are under it).
    pub(crate) host: PathBuf,
    pub(crate) backend: Arc<Shared>,
    pub(crate) spec: SandboxSpec,
    pub(crate) identity: TemplateIdentity,
    pub(crate) state: Mutex<State>,
    pub(crate) exec_lock: tokio::sync::Mutex<()>,
}

impl ProcessSandbox {
    /// A sandbox in the directory `dir` that `create` just made.
    pub(crate) fn new(
        dir: SandboxDir,
        backend: Arc<Shared>,
        spec: SandboxSpec,
        identity: TemplateIdentity,
        marker: Marker,
    ) -> Self {
        let probe = backend.probe();
        Self {
            id: dir.name().to_owned(),
            host: dir.host_path(),
            dir,
            backend,
            spec,
            identity,
            state: Mutex::new(State {
                marker,
                tree: None,
                destroyed: None,
                execs: 0,
                probe,
                reprobe_note: None,
                privilege: None,
            }),
            exec_lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// Kills the command's processes if `exec` is dropped before it finished.
struct KillOnDrop(Option<Arc<Tree>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            tree.signal(KillSignal::Kill);
        }
    }
}

fn wait_status(raw: i32) -> ExitStatus {
    if libc::WIFEXITED(raw) {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Exited(1)
    }
}

impl ProcessSandbox {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The workspace through the sandbox's descriptor (valid in this process only).
    pub(crate) fn workspace(&self) -> PathBuf {
        self.dir.proc_path().join("workspace")
    }

    /// The sandbox directory on the host.
    pub fn dir(&self) -> &Path {
        &self.host
    }

    pub(crate) fn probe(&self) -> Arc<Probe> {
        self.state().probe.clone()
    }

    pub(crate) fn applied(&self) -> Applied {
        self.probe().applied.clone()
    }

    pub(crate) fn rlimits(&self) -> RlimitPlan {
        let l = &self.spec.limits;
        RlimitPlan {
            open_files: Some(l.open_files),
            file_size: Some(l.artifact_bytes_each.max(l.extracted_bytes)),
        }
    }

    pub(crate) fn write_marker(&self, f: impl FnOnce(&mut Marker)) -> std::io::Result<()> {
        let marker = {
            let mut st = self.state();
            f(&mut st.marker);
            st.marker.clone()
        };
        if self.state().destroyed.is_some() {
            return Ok(());
        }
        self.dir.write_marker(&marker)
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn isolation(&self) -> IsolationReport {
        let network = match (self.spec.network, self.applied()) {
            (Network::Enabled, _) => NetworkIsolation::Enabled,
            (Network::None, Applied::PidNamespace { network: true, .. }) => NetworkIsolation::None,
            (Network::None, _) => NetworkIsolation::NotIsolated,
        };
        IsolationReport {
            backend: BACKEND.into(),
            network,
            memory_bytes: None,
            pids: None,
            process_containment: self.applied().containment(),
            user: Some(format!("uid {}", rustix::process::geteuid().as_raw())),
            security_boundary: false,
            pooled: false,
            not_enforced: Vec::new(),
            details: self.isolation_details(),
        }
    }

    fn identity(&self) -> TemplateIdentity {
        self.identity.clone()
    }

    async fn materialize(
        &self,
        source: ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        if self.state().destroyed.is_some() {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        self.dir
            .materialize("workspace", source, policy, progress)
            .await
    }

    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome> {
        let Ok(_exclusive) = self.exec_lock.try_lock() else {
            return Err(ProcessError::Busy(self.id.clone()).into());
        };
        if self.state().destroyed.is_some() {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        // `reports` already holds what arrived during the spawn (a fast command may have
        // ended by then); more records are read once the leader exited.
        let (mut child, tree, report, mut reports) = match self.spawn_with_fallback(request).await {
            Ok(s) => s,
            Err(message) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(message))),
        };
        {
            let mut st = self.state();
            st.tree = Some(tree.clone());
            st.execs += 1;
        }
        let mut guard = KillOnDrop(Some(tree.clone()));
        let record = serde_json::to_value(tree.record()).unwrap_or_default();
        if let Err(e) = self.write_marker(|m| m.state = serde_json::json!({ "processes": record }))
        {
            tracing::warn!(sandbox = %self.id, error = %e, "recording the command's processes in the marker failed");
        }
        sink.started().await;

        let cfg = &self.backend.config;
        let (exit_tx, exit_rx) = watch::channel(false);
        let stdout = child.take_stdout();
        let stderr = child.take_stderr();
        let out = async {
            match stdout {
                Some(r) => {
                    pump(
                        r,
                        OutputStream::Stdout,
                        sink,
                        exit_rx.clone(),
                        cfg.drain_timeout,
                    )
                    .await
                }
                None => PumpEnd::Eof,
            }
        };
        let err = async {
            match stderr {
                Some(r) => {
                    pump(
                        r,
                        OutputStream::Stderr,
                        sink,
                        exit_rx.clone(),
                        cfg.drain_timeout,
                    )
                    .await
                }
                None => PumpEnd::Eof,
            }
        };
        let tracks = matches!(self.applied(), Applied::ProcessGroup);
        let wait = async {
            let mut scan = tokio::time::interval(Duration::from_millis(50));
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    _ = scan.tick(), if tracks => tree.scan(),
                }
            };
            tree.set_reaped();
            // Whatever the command left behind dies now, so it cannot hold the pipes.
            let survivors = tree.finish(cfg.kill_confirm_timeout).await;
            let _ = exit_tx.send(true);
            (status, survivors)
        };
        let (out_end, err_end, (status, mut survivors)) = tokio::join!(out, err, wait);
        guard.0 = None;
        if let Some(cg) = tree.cgroup()
            && survivors.is_empty()
        {
            let _ = cg.remove();
        }
        for (end, name) in [(out_end, "stdout"), (err_end, "stderr")] {
            if end == PumpEnd::Abandoned {
                survivors.push(format!(
                    "an unknown process still held the command's {name} open {} ms after it exited",
                    cfg.drain_timeout.as_millis()
                ));
            }
        }
        let status = status.map_err(|source| ProcessError::Io {
            context: "waiting for the command".into(),
            source,
        })?;
        if let Some(r) = &report {
            reports.parse(&read_available(r));
        }
        let status = match (reports.command_status, reports.init_status) {
            (Some(raw), _) => wait_status(raw),
            (None, Some(raw)) if libc::WIFSIGNALED(raw) => {
                ExitStatus::Signaled(libc::WTERMSIG(raw))
            }
            _ => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Exited(code),
                (None, Some(sig)) => ExitStatus::Signaled(sig),
                (None, None) => ExitStatus::Exited(1),
            },
        };
        let status = match status {
            ExitStatus::Signaled(sig) if sig == libc::SIGXFSZ => {
                ExitStatus::LimitExceeded(format!(
                    "the command wrote a file over the {}-byte file size limit (SIGXFSZ)",
                    self.rlimits().file_size.unwrap_or(0)
                ))
            }
            s => s,
        };
        Ok(ExecOutcome { status, survivors })
    }

    async fn signal(&self, signal: KillSignal) -> Result<()> {
        let tree = self.state().tree.clone();
        if let Some(tree) = tree {
            tree.signal(signal);
        }
        Ok(())
    }

    async fn collect_artifact(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure> {
        let workspace = self.dir.open_dir("workspace").map_err(|e| {
            ArtifactFailure::new(
                crownest_core::event::ArtifactErrorReason::NotFound,
                format!("{path:?}: the workspace cannot be opened: {e}"),
            )
        })?;
        crownest_core::hostdir::collect_artifact(Arc::new(workspace), path, max_bytes).await
    }

    async fn keep(&self, until: Timestamp) -> Result<()> {
        if self.state().destroyed.is_some() {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        self.write_marker(|m| m.keep_until = Some(until))
            .map_err(|source| {
                Error::from(ProcessError::Io {
                    context: format!("updating the marker of {}", self.host.display()),
                    source,
                })
            })
    }

    async fn destroy(&self) -> Result<Destroyed> {
        let tree = {
            let st = self.state();
            if let Some(done) = st.destroyed {
                return Ok(done);
            }
            st.tree.clone()
        };
        let mut survivors = Vec::new();
        if let Some(tree) = &tree {
            tree.signal(KillSignal::Kill);
            survivors = tree.finish(self.backend.config.kill_confirm_timeout).await;
            if let Some(cg) = tree.cgroup() {
                let _ = cg.remove();
            }
        }
        let removal = self
            .dir
            .remove(self.backend.config.removal_wait)
            .await
            .map_err(|source| ProcessError::Remove {
                path: self.host.display().to_string(),
                source,
            })?;
        if !survivors.is_empty() {
            return Err(ProcessError::Survivors {
                id: self.id.clone(),
                survivors: survivors.join(", "),
            }
            .into());
        }
        let done = match removal {
            Removal::Done => Destroyed::Gone,
            Removal::Pending => Destroyed::RemovalPending,
        };
        self.state().destroyed = Some(done);
        Ok(done)
    }
}
