//! [`DockerSandbox`]: one hardened container, created with everything set in one call and
//! started (or claimed from the warm pool, already started), whose launcher receives the
//! one command after the workspace was streamed into it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::AttachContainerResults;
use bollard::query_parameters::{KillContainerOptionsBuilder, RenameContainerOptionsBuilder};
use crownest_core::archive::{ExtractPolicy, ExtractSummary};
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact};
use crownest_core::backend::{ArchiveSource, ProgressFn};
use crownest_core::event::ArtifactErrorReason;
use crownest_core::hostdir::{Marker, SandboxDir};
use crownest_core::{
    Destroyed, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus, IsolationReport, KillSignal,
    Result, Sandbox, SandboxSpec, TemplateIdentity, Timestamp,
};

use crate::backend::Shared;
use crate::container::{self, WORKSPACE};
use crate::error::{DockerError, is_not_found, status_of};
use crate::exec::{self, Started};
use crate::image::ImageInfo;
use crate::pool::Warm;
use crate::upload::{self, WorkspaceIndex};

/// The registered backend name (also the `backend` of its host staging markers).
use crate::BACKEND;

/// A sandbox made of one Docker container (and the anonymous volume of its workspace),
/// labelled with the owner process and engine instance, and with the run unless it came
/// from the warm pool (see the crate docs for the layout).
#[derive(Debug)]
pub struct DockerSandbox {
    id: String,
    shared: Arc<Shared>,
    spec: SandboxSpec,
    image: ImageInfo,
    /// The container id.
    container: String,
    /// Claimed from the warm pool (recorded in the isolation report).
    pooled: bool,
    /// The work-root directory bound at `/workspace` (`place.rs`); `None`: a volume.
    bound: Option<Arc<SandboxDir>>,
    index: Mutex<Option<WorkspaceIndex>>,
    /// The launcher attached before the start with the workspace offered
    /// (`container::offer`), until the hand-over (or the command) takes it.
    offered: Mutex<Option<container::Offered>>,
    /// The container's start, when it was left in flight (`container::create_starting`):
    /// the workspace is written from the host meanwhile; the launcher is awaited through it.
    starting: Option<container::Starting>,
    /// The attachment the workspace went through (step 0 of `launcher.rs`), kept for the
    /// command.
    attached: Mutex<Option<AttachContainerResults>>,
    sent: Mutex<Option<KillSignal>>,
    /// `exec` was called (a sandbox runs exactly one command).
    exec_called: AtomicBool,
    /// The command was handed to the launcher: signals go to the container now.
    started: AtomicBool,
    /// Docker reported the container stopped after the command (see
    /// `DockerConfig::background_removal`).
    stopped: AtomicBool,
    destroyed: AtomicBool,
}

impl DockerSandbox {
    /// Creates and starts the sandbox container (one create call, one start).
    pub(crate) async fn create(
        shared: Arc<Shared>,
        spec: &SandboxSpec,
        image: ImageInfo,
    ) -> Result<Self, DockerError> {
        let id = container::new_sandbox_id();
        let shape = container::Shape {
            sandbox: &id,
            labels: container::labels(&id, spec),
            image_id: &image.id,
            limits: &spec.limits,
            network: spec.network,
            bound: None,
        };
        let marker = Marker::new(BACKEND, &spec.run_id, &spec.instance, spec.owner.clone());
        // A bound workspace is written while the container starts; through the launcher,
        // the start must be over first.
        let (created, bound) = container::create_sandbox(&shared, shape, marker, true).await?;
        Ok(Self::with(shared, spec, image, id, created, bound, false))
    }

    /// A sandbox over a container claimed from the warm pool (created with the same shape
    /// for this template, limits and network).
    pub(crate) fn adopt(
        shared: Arc<Shared>,
        spec: &SandboxSpec,
        image: ImageInfo,
        warm: Warm,
    ) -> Self {
        let created = container::Created {
            id: warm.container,
            offered: warm.offered.into_inner().unwrap_or_else(|p| p.into_inner()),
            starting: warm.starting,
            attached: warm
                .attached
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        };
        Self::with(shared, spec, image, warm.sandbox, created, warm.bound, true)
    }

    fn with(
        shared: Arc<Shared>,
        spec: &SandboxSpec,
        image: ImageInfo,
        id: String,
        created: container::Created,
        bound: Option<Arc<SandboxDir>>,
        pooled: bool,
    ) -> Self {
        Self {
            id,
            shared,
            spec: spec.clone(),
            image,
            container: created.id,
            pooled,
            bound,
            index: Mutex::new(None),
            offered: Mutex::new(created.offered),
            attached: Mutex::new(created.attached),
            starting: created.starting,
            sent: Mutex::new(None),
            exec_called: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            destroyed: AtomicBool::new(false),
        }
    }

    /// True when this sandbox was claimed from the warm pool.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Waits for the container's start if it was left in flight (a no-op otherwise).
    async fn started(&self) -> Result<(), DockerError> {
        match &self.starting {
            Some(start) => start.clone().await.map_err(DockerError::State),
            None => Ok(()),
        }
    }

    fn check_alive(&self) -> Result<(), DockerError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(DockerError::State(format!(
                "sandbox {} was destroyed",
                self.id
            )));
        }
        Ok(())
    }

    /// Puts the host tree `dir` (only this process writes it) into the container's
    /// workspace, owned by the sandbox user: moved into the bound directory while the
    /// container starts (`place.rs`), or streamed through the launcher on the attach stream
    /// the command will use (kept for `exec`), or, when the image cannot unpack it, with
    /// Docker's archive upload.
    async fn send_workspace(&self, dir: PathBuf) -> Result<WorkspaceIndex, DockerError> {
        let owner = self.shared.config.uid_gid().unwrap_or((10001, 10001));
        let docker = &self.shared.docker;
        if let Some(bound) = &self.bound {
            let path = bound.host_path().join(crate::place::BOUND);
            let path = path.display();
            let bound = bound.clone();
            let moved = async {
                tokio::task::spawn_blocking(move || crate::place::move_tree(&dir, &bound, owner))
                    .await
                    .map_err(|e| DockerError::State(format!("the workspace move failed: {e}")))
            };
            let (moved, started) = tokio::join!(moved, self.started());
            started?;
            return moved?.map_err(|e| DockerError::WorkspaceTransfer {
                detail: format!("moving the workspace into its directory {path} failed: {e}"),
            });
        }
        let offered = self
            .offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.started().await?;
        let (mut attached, nonce) = match offered {
            Some(o) => (o.attached, Some(o.nonce)),
            None => match exec::attach(docker, &self.container).await? {
                Ok(a) => (a, None),
                Err(message) => {
                    return Err(DockerError::WorkspaceTransfer {
                        detail: format!("the container is not running: {message}"),
                    });
                }
            },
        };
        // Bounded like the archive upload it replaces (one request's timeout).
        let timeout = self.shared.config.request_timeout;
        let streamed = tokio::time::timeout(
            timeout,
            upload::stream_to_launcher(&mut attached, nonce, dir.clone(), owner),
        )
        .await
        .map_err(|_| DockerError::WorkspaceTransfer {
            detail: format!("no answer from the container within {timeout:?}"),
        })??;
        *self.attached.lock().unwrap_or_else(|p| p.into_inner()) = Some(attached);
        match streamed {
            Some(index) => Ok(index),
            None => upload::upload_tree(docker, &self.container, dir, owner).await,
        }
    }

    async fn exec_inner(
        &self,
        request: &ExecRequest,
        sink: &dyn ExecSink,
    ) -> Result<ExecOutcome, DockerError> {
        self.check_alive()?;
        // A start still in flight (a bound workspace) is awaited once the frame is written
        // (`exec::Launch::starting`); the attachment was made before it.
        let starting = match &self.starting {
            Some(start)
                if self
                    .attached
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some() =>
            {
                Some(start.clone())
            }
            _ => {
                self.started().await?;
                None
            }
        };
        if self.exec_called.swap(true, Ordering::SeqCst) {
            return Err(DockerError::State(
                "a sandbox runs exactly one command".into(),
            ));
        }
        let index = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| {
                let mut i = WorkspaceIndex::default();
                i.dirs.insert(String::new());
                i
            });
        let cwd = match crownest_core::WorkspacePath::parse(&request.cwd) {
            Ok(cwd) if index.dirs.contains(cwd.as_str()) => cwd.as_str().to_owned(),
            _ => {
                return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(format!(
                    "cwd {:?} is not a directory of the workspace",
                    request.cwd
                ))));
            }
        };
        let Some(argv0) = request.argv.first() else {
            return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(
                "empty argv".into(),
            )));
        };
        // The command's variables: the template's (in the container's `Env`), overridden by
        // the request's (in the frame, with the secrets: see `launcher.rs`).
        let path_env = request
            .env
            .get("PATH")
            .map(String::as_str)
            .or_else(|| {
                container::template_env()
                    .iter()
                    .find(|(k, _)| *k == "PATH")
                    .map(|(_, v)| *v)
            })
            .unwrap_or_default()
            .to_owned();
        let working_dir = if cwd.is_empty() {
            WORKSPACE.to_owned()
        } else {
            format!("{WORKSPACE}/{cwd}")
        };
        let nonce = crate::launcher::new_nonce();
        let frame = match crate::launcher::frame(&crate::launcher::Command {
            nonce: &nonce,
            cwd: &working_dir,
            env: &request.env,
            secrets: &request.secrets,
            argv: &request.argv,
        }) {
            Ok(f) => f,
            Err(msg) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg))),
        };
        let docker = &self.shared.docker;
        let root = self.shared.root().ok();
        let image_paths = exec::ImagePaths {
            docker,
            container: &self.container,
            image_id: &self.image.id,
            cache: &self.shared.stat_cache,
            root: root.as_ref().map(|r| r.path()),
        };
        if let Err(msg) = exec::preflight(&image_paths, &index, argv0, &path_env, &cwd).await? {
            return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg)));
        }
        // A workspace offer no tree followed (no `materialize`): end it, so the launcher
        // reads the frame next.
        let pending = self
            .offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut o) = pending {
            let timeout = self.shared.config.request_timeout;
            tokio::time::timeout(timeout, upload::settle_offer(&mut o.attached, &o.nonce))
                .await
                .map_err(|_| DockerError::WorkspaceTransfer {
                    detail: format!("no answer from the container within {timeout:?}"),
                })??;
            *self.attached.lock().unwrap_or_else(|p| p.into_inner()) = Some(o.attached);
        }
        let launch = exec::Launch {
            docker,
            container: &self.container,
            frame: &frame,
            nonce: &nonce,
            started: &self.started,
            requested: &self.sent,
            attached: self
                .attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            starting,
        };
        let observed = match exec::launch_and_wait(launch, sink).await? {
            Started::Refused(msg) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg))),
            Started::Ran(o) => o,
        };
        if observed.stopped {
            self.stopped.store(true, Ordering::SeqCst);
        }
        let sent = *self.sent.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ExecOutcome::new(exec::exit_status(
            &observed,
            sent,
            self.spec.limits.memory_bytes,
        )))
    }

    async fn signal_inner(&self, signal: KillSignal) -> Result<(), DockerError> {
        // No command yet (exec not called): nothing to signal (the launcher waits).
        if !self.exec_called.load(Ordering::SeqCst) {
            return Ok(());
        }
        let run = &self.container;
        {
            // Recorded even while the command is being handed over: `exec` delivers a
            // signal that arrived then right after the frame.
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            if *sent != Some(KillSignal::Kill) {
                *sent = Some(signal);
            }
        }
        if !self.started.load(Ordering::SeqCst) || self.destroyed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let docker = &self.shared.docker;
        let opts = KillContainerOptionsBuilder::new()
            .signal(signal.name())
            .build();
        match docker.kill_container(run, Some(opts)).await {
            Ok(()) => {}
            // Not running (any more) or gone: nothing to signal.
            Err(e) if is_not_found(&e) || status_of(&e) == Some(409) => return Ok(()),
            Err(e) => return Err(DockerError::api("kill")(e)),
        }
        // `SIGTERM` reaches pid 1, the launcher, which passes it to every other process of
        // the sandbox user (`launcher.rs`, "Signals"); `SIGKILL` ends pid 1 and so the
        // whole namespace.
        Ok(())
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn isolation(&self) -> IsolationReport {
        crate::backend::isolation_report(
            &self.shared.config,
            &self.spec,
            &self.image,
            self.pooled,
            self.bound.is_some(),
        )
    }

    fn identity(&self) -> TemplateIdentity {
        self.image.identity()
    }

    async fn materialize(
        &self,
        source: ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        self.check_alive()?;
        let archive = match source {
            // Checked and extracted at upload on this backend's work root: stream that tree
            // into the container.
            ArchiveSource::Prepared(tree) => {
                let uploaded = self.send_workspace(tree.tree_path()).await;
                let summary = tree.summary();
                // Deleted beside the command (the backend's `shutdown` waits for it).
                tree.discard_in_background().await;
                *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some(uploaded?);
                progress(crownest_core::archive::ExtractProgress {
                    phase: crownest_core::event::ArchivePhase::Extracting,
                    bytes_done: summary.compressed_bytes,
                    entries: summary.entries,
                });
                return Ok(summary);
            }
            ArchiveSource::Archive(archive) => archive,
        };
        // 1. Extract on the host into a staging directory of the private work root: a
        //    marked sandbox directory (crash-safe create; a sweep removes it once this
        //    process is gone), through the one extraction bridge.
        let root = self.shared.root()?;
        let marker = Marker::new(
            BACKEND,
            &self.spec.run_id,
            &self.spec.instance,
            self.spec.owner.clone(),
        );
        let staging = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || {
                SandboxDir::create(&root, &marker, |d| d.mkdir("workspace", 0o700))
            })
            .await
            .map_err(|e| Error::backend(BACKEND, format!("staging task failed: {e}")))??
        };
        let extracted = staging
            .materialize(
                "workspace",
                ArchiveSource::Archive(archive),
                policy,
                progress,
            )
            .await;
        let summary = match extracted {
            Ok(summary) => summary,
            Err(e) => {
                remove_staging(&staging).await;
                return Err(e);
            }
        };
        // 2. Stream a tar of the staged tree into the container's workspace, owned by the
        //    sandbox user.
        let uploaded = self
            .send_workspace(staging.proc_path().join("workspace"))
            .await;
        remove_staging(&staging).await;
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some(uploaded?);
        Ok(summary)
    }

    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome> {
        Ok(self.exec_inner(request, sink).await?)
    }

    async fn signal(&self, signal: KillSignal) -> Result<()> {
        Ok(self.signal_inner(signal).await?)
    }

    async fn collect_artifact(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(ArtifactFailure::new(
                ArtifactErrorReason::NotFound,
                format!("{path:?}: the sandbox was destroyed"),
            ));
        }
        let root = self.shared.root().map_err(|e| {
            ArtifactFailure::new(
                crownest_core::event::ArtifactErrorReason::NotFound,
                format!("{path:?}: host staging: {e}"),
            )
        })?;
        crate::download::collect(
            &self.shared.docker,
            &self.container,
            &root.proc_path(),
            &self.id,
            path,
            max_bytes,
            self.spec.limits.entries,
        )
        .await
    }

    async fn keep(&self, until: Timestamp) -> Result<()> {
        self.check_alive()?;
        // The bound directory first: its marker's deadline keeps it from the sweep as
        // long as the renamed container.
        if let Some(bound) = &self.bound {
            let mut marker = bound.read_marker().map_err(|e| {
                Error::backend(BACKEND, format!("reading the workspace marker: {e}"))
            })?;
            marker.keep_until = Some(until);
            bound.write_marker(&marker).map_err(|e| {
                Error::backend(BACKEND, format!("writing the workspace marker: {e}"))
            })?;
        }
        let name = container::kept_container_name(&self.id, until.as_millis());
        let opts = RenameContainerOptionsBuilder::new().name(&name).build();
        self.shared
            .docker
            .rename_container(&self.container, opts)
            .await
            .map_err(DockerError::api("rename container (keep)"))?;
        Ok(())
    }

    async fn destroy(&self) -> Result<Destroyed> {
        let first = !self.destroyed.swap(true, Ordering::SeqCst);
        if first && self.shared.config.background_removal && self.stopped.load(Ordering::SeqCst) {
            // Nothing of it runs (Docker reported the container stopped after the
            // command) and nothing reaches it: the removal and its check leave the run's
            // critical path (see `DockerConfig::with_background_removal`); so does the
            // deletion of the bound directory, which a stopped container cannot write.
            self.shared.removals.spawn(
                self.shared.clone(),
                self.id.clone(),
                self.container.clone(),
            );
            if let Some(bound) = &self.bound {
                container::remove_bound(bound, Duration::ZERO).await;
            }
            if self.pooled {
                self.shared.pool.released(&self.shared, &self.spec.template);
            }
            return Ok(Destroyed::RemovalPending);
        }
        let removed = crate::cleanup::remove_sandbox(
            &self.shared.docker,
            &self.id,
            std::slice::from_ref(&self.container),
        )
        .await;
        if first && self.pooled {
            self.shared.pool.released(&self.shared, &self.spec.template);
        }
        removed?;
        if let Ok(root) = self.shared.root() {
            crate::cleanup::remove_host_leftovers(&root.proc_path(), &self.id);
        }
        // The container is gone: nothing can write its bound directory any more.
        if let Some(bound) = &self.bound
            && !container::remove_bound(bound, BOUND_REMOVAL_WAIT).await
        {
            return Ok(Destroyed::RemovalPending);
        }
        Ok(Destroyed::Gone)
    }
}

/// How long a `destroy` on the run's path waits for its bound directory's deletion before
/// it reports the removal pending (the backend's `shutdown` waits for the rest).
const BOUND_REMOVAL_WAIT: Duration = Duration::from_secs(10);

/// Removes a host staging directory: unreachable at once (a tombstone), deleted in the
/// background beside the command (the backend's `shutdown` waits for it; a sweep finishes
/// what a crash cut short).
async fn remove_staging(staging: &SandboxDir) {
    if let Err(e) = staging.remove(Duration::ZERO).await {
        tracing::warn!(staging = %staging.host_path().display(), error = %e, "removing the host staging directory failed; a sweep retries");
    }
}
