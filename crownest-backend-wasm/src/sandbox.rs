//! [`WasmSandbox`]: one run's directory, its workspace and the guest running in it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crownest_core::archive::{ExtractPolicy, ExtractSummary};
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact};
use crownest_core::backend::{ArchiveSource, ProgressFn};
use crownest_core::{
    Destroyed, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus, IsolationReport, KillSignal,
    Limits, Result, Sandbox, TemplateIdentity, Timestamp, WorkspacePath,
};
use tokio::sync::watch;

use crate::backend::Shared;
use crate::error::WasmError;
use crate::guest::{self, GuestCommand};
use crate::modules::Interpreter;
use crate::template::{self, TemplateModules};
use crownest_core::hostdir::{Marker, Removal, SandboxDir};
use std::os::fd::OwnedFd;

/// A sandbox of the wasm backend: a host directory whose `workspace/` is the only
/// read-write directory a guest sees.
pub struct WasmSandbox {
    shared: Arc<Shared>,
    dir: SandboxDir,
    modules: TemplateModules,
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    marker: Option<Marker>,
    /// Stop channel of the running guest (the signal number), if one runs.
    running: Option<watch::Sender<Option<i32>>>,
    destroyed: bool,
    /// The outcome of the first successful `destroy`.
    removed: Option<Destroyed>,
}

impl std::fmt::Debug for WasmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("id", &self.dir.name())
            .field("dir", &self.dir.host_path())
            .finish_non_exhaustive()
    }
}

/// Clears the running guest's stop channel when `exec` returns (on every path).
struct RunningGuard<'a>(&'a WasmSandbox);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.state().running = None;
    }
}

fn spawn_failed(message: impl Into<String>) -> Result<ExecOutcome> {
    Ok(ExecOutcome::new(ExitStatus::SpawnFailed(message.into())))
}

impl WasmSandbox {
    pub(crate) fn new(
        shared: Arc<Shared>,
        dir: SandboxDir,
        modules: TemplateModules,
        limits: Limits,
        marker: Marker,
    ) -> Self {
        Self {
            shared,
            dir,
            modules,
            limits,
            state: Mutex::new(State {
                marker: Some(marker),
                ..State::default()
            }),
        }
    }

    /// The `argv[0]` names this sandbox's template runs, with the module each selects.
    fn programs(&self) -> String {
        self.modules
            .modules()
            .map(|m| {
                format!(
                    "{} (its {} module {})",
                    m.interpreter.argv0s().join(", "),
                    m.interpreter.fact_prefix(),
                    m.file()
                )
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host directory of the workspace (for inspection and tests).
    pub fn workspace_path(&self) -> std::path::PathBuf {
        self.dir.host_path().join("workspace")
    }

    /// Opens the workspace and the cwd (validated, normalized) inside it, one component at
    /// a time from the sandbox's descriptor, never following a symlink.
    fn open_cwd(&self, cwd: &WorkspacePath) -> std::result::Result<(OwnedFd, OwnedFd), String> {
        let workspace = self
            .dir
            .open_dir("workspace")
            .map_err(|e| format!("the workspace cannot be opened: {e}"))?;
        let mut fd = self
            .dir
            .open_dir("workspace")
            .map_err(|e| format!("the workspace cannot be opened: {e}"))?;
        for c in cwd.components() {
            let flags = rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC;
            fd = match rustix::fs::openat(&fd, c, flags, rustix::fs::Mode::empty()) {
                Ok(next) => next,
                Err(e) => {
                    let st = rustix::fs::statat(&fd, c, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
                    return Err(match st {
                        Ok(st)
                            if rustix::fs::FileType::from_raw_mode(st.st_mode)
                                == rustix::fs::FileType::Symlink =>
                        {
                            format!(
                                "cwd {cwd:?}: {c:?} is a symlink; the working directory must be a real directory"
                            )
                        }
                        Ok(_) => format!("cwd {cwd:?}: {c:?} is not a directory"),
                        Err(_) => format!("cwd {cwd:?} does not exist in the workspace ({e})"),
                    });
                }
            };
        }
        Ok((workspace, fd))
    }
}

#[async_trait]
impl Sandbox for WasmSandbox {
    fn id(&self) -> &str {
        self.dir.name()
    }

    fn isolation(&self) -> IsolationReport {
        crate::backend::isolation_report(&self.limits)
    }

    fn identity(&self) -> TemplateIdentity {
        self.modules.identity()
    }

    async fn materialize(
        &self,
        source: ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        // Through the sandbox's descriptor: no component of the host path is resolved.
        self.dir
            .materialize("workspace", source, policy, progress)
            .await
    }

    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome> {
        let Some(argv0) = request.argv.first() else {
            return spawn_failed("the command is empty");
        };
        let Some(interpreter) = Interpreter::from_argv0(argv0) else {
            return spawn_failed(format!(
                "{argv0:?} is not a program of the wasm backend's template {:?}: argv[0] must be {}; \
                 there is no shell, no PATH and no other program",
                self.modules.name,
                self.programs()
            ));
        };
        if self.modules.get(interpreter).is_none() {
            return spawn_failed(format!(
                "{argv0:?} selects the {} module, which template {:?} does not have: its argv[0] \
                 must be {}",
                interpreter.fact_prefix(),
                self.modules.name,
                self.programs()
            ));
        }
        let cwd = match WorkspacePath::parse(&request.cwd) {
            Ok(cwd) => cwd,
            Err(e) => return spawn_failed(format!("invalid cwd {:?}: {e}", request.cwd)),
        };
        let (workspace_fd, cwd_fd) = match self.open_cwd(&cwd) {
            Ok(fds) => fds,
            Err(m) => return spawn_failed(m),
        };
        let site_fd = match self.dir.open_dir("python") {
            Ok(fd) => fd,
            Err(e) => return spawn_failed(format!("the python dir cannot be opened: {e}")),
        };
        // The guest's preopens name these descriptors (`/proc/self/fd/<n>`), held open for
        // the whole run: no path component can be swapped under them.
        let workspace = proc_path(&workspace_fd);
        let host_cwd = proc_path(&cwd_fd);
        // From here on a signal stops the command, even before the guest runs (the engine's
        // deadline also covers loading the module).
        let (stop_tx, mut stop_rx) = watch::channel(None);
        {
            let mut st = self.state();
            if st.destroyed {
                return spawn_failed("the sandbox was destroyed");
            }
            st.running = Some(stop_tx);
        }
        let _running = RunningGuard(self);
        let prepare = async {
            // The module files must still be the verified ones.
            let name = &self.modules.name;
            let module = match self.shared.verify(name) {
                Some(Ok(m)) if m == self.modules => m.get(interpreter).cloned(),
                Some(Ok(_)) | None => None,
                Some(Err(reason)) => return Ok(Err(template::unavailable(name, &reason))),
            };
            let Some(module) = module else {
                return Ok(Err(format!(
                    "the modules of template {name:?} changed since this sandbox was created"
                )));
            };
            self.shared
                .runtime
                .instance_pre(&module)
                .await
                .map(|(pre, _)| Ok(pre))
        };
        let pre = tokio::select! {
            biased;
            sig = async { stop_rx.wait_for(Option::is_some).await.ok().and_then(|s| *s) } => {
                return Ok(ExecOutcome::new(ExitStatus::Signaled(sig.unwrap_or(9))));
            }
            r = prepare => match r? {
                Ok(pre) => pre,
                Err(message) => return spawn_failed(message),
            },
        };
        let backstop = Duration::from_millis(
            self.limits
                .timeout_ms
                .saturating_add(self.limits.kill_grace_ms),
        )
        .saturating_add(self.shared.config.deadline_margin);
        let python_site = proc_path(&site_fd);
        // Plain settings and secrets alike go into the WASI context, which lives in this
        // process's memory only.
        let env = request.command_env();
        let cmd = GuestCommand {
            interpreter,
            argv: &request.argv,
            env: &env,
            workspace: &workspace,
            cwd: cwd.as_str(),
            host_cwd: &host_cwd,
            python_site: &python_site,
            memory_bytes: self.limits.memory_bytes,
            backstop,
        };
        let status = guest::run(
            &self.shared.runtime,
            pre,
            &cmd,
            &self.shared.config,
            stop_rx,
            sink,
        )
        .await?;
        drop((workspace_fd, cwd_fd, site_fd));
        Ok(ExecOutcome::new(status))
    }

    async fn signal(&self, signal: KillSignal) -> Result<()> {
        let sig = match signal {
            KillSignal::Term => 15,
            KillSignal::Kill => 9,
        };
        if let Some(tx) = self.state().running.as_ref() {
            tx.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(sig);
                    true
                } else {
                    false
                }
            });
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
        let marker = {
            let mut st = self.state();
            if st.destroyed {
                return Err(Error::invalid(
                    "keepSandbox",
                    "the sandbox was already destroyed",
                ));
            }
            let Some(m) = st.marker.as_mut() else {
                return Err(Error::invalid("keepSandbox", "the sandbox has no marker"));
            };
            m.keep_until = Some(until);
            m.clone()
        };
        self.dir
            .write_marker(&marker)
            .map_err(WasmError::io(format!(
                "writing the marker of {}",
                self.dir.name()
            )))?;
        Ok(())
    }

    async fn destroy(&self) -> Result<Destroyed> {
        {
            let mut st = self.state();
            if let Some(done) = st.removed {
                return Ok(done);
            }
            if let Some(tx) = st.running.as_ref() {
                tx.send_if_modified(|v| {
                    if v.is_none() {
                        *v = Some(9);
                        true
                    } else {
                        false
                    }
                });
            }
            st.destroyed = true;
        }
        let removal = self
            .dir
            .remove(self.shared.config.removal_wait)
            .await
            .map_err(WasmError::io(format!(
                "removing sandbox {}",
                self.dir.name()
            )))?;
        let done = match removal {
            Removal::Done => Destroyed::Gone,
            Removal::Pending => Destroyed::RemovalPending,
        };
        self.state().removed = Some(done);
        Ok(done)
    }
}

fn proc_path(fd: &OwnedFd) -> std::path::PathBuf {
    use std::os::fd::AsRawFd as _;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
