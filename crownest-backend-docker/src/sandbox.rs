//! [`DockerSandbox`]: one labelled volume, a stage container that receives the archive, and
//! a run container that runs the one command.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, RenameContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use crownest_core::archive::{ExtractPolicy, ExtractSummary};
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact};
use crownest_core::backend::{ArchiveSource, ProgressFn};
use crownest_core::event::ArtifactErrorReason;
use crownest_core::hostdir::{Marker, SandboxDir};
use crownest_core::{
    Destroyed, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus, IsolationReport, KillSignal,
    Network, Result, Sandbox, SandboxSpec, TemplateIdentity, Timestamp,
};
use tokio::sync::mpsc;

use crate::backend::Shared;
use crate::container::{self, KEPT_MARK, LABEL_ROLE, WORKSPACE};
use crate::error::{DockerError, is_not_found, status_of};
use crate::exec::{self, Started};
use crate::image::ImageInfo;
use crate::upload::{self, WorkspaceIndex};

/// The registered backend name (also the `backend` of its host staging markers).
use crate::BACKEND;

/// How long a materialize waits for its host staging directory to be deleted before it
/// leaves the rest to the background.
const STAGING_REMOVAL_WAIT: Duration = Duration::from_secs(5);

/// A sandbox made of Docker resources, all labelled with the run, the engine instance and
/// the owner process (see the crate docs for the layout).
#[derive(Debug)]
pub struct DockerSandbox {
    id: String,
    shared: Arc<Shared>,
    spec: SandboxSpec,
    image: ImageInfo,
    stage: String,
    run: Mutex<Option<String>>,
    index: Mutex<Option<WorkspaceIndex>>,
    sent: Mutex<Option<KillSignal>>,
    stage_removal: Mutex<Option<tokio::task::JoinHandle<()>>>,
    started: AtomicBool,
    destroyed: AtomicBool,
}

impl DockerSandbox {
    /// Creates the volume and the stage container (never started).
    pub(crate) async fn create(
        shared: Arc<Shared>,
        spec: &SandboxSpec,
        image: ImageInfo,
    ) -> Result<Self, DockerError> {
        let id = format!("crownest-{}", uuid::Uuid::new_v4().simple());
        let docker = &shared.docker;
        let labels = container::labels(&id, spec);
        let volume = bollard::models::VolumeCreateRequest {
            name: Some(id.clone()),
            driver: Some("local".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        docker
            .create_volume(volume)
            .await
            .map_err(DockerError::api("create volume"))?;
        let mut stage_labels = labels;
        stage_labels.insert(LABEL_ROLE.into(), "stage".into());
        let body = container::create_body(
            &shared.config,
            &image.id,
            vec!["true".into()],
            Vec::new(),
            WORKSPACE.into(),
            stage_labels,
            container::host_config(&shared.config, &spec.limits, Network::None, &id),
        );
        let opts = CreateContainerOptionsBuilder::new()
            .name(&format!("{id}-stage"))
            .build();
        let stage = match docker.create_container(Some(opts), body).await {
            Ok(r) => r.id,
            Err(e) => {
                let _ = crate::cleanup::remove_sandbox(docker, &id, &[]).await;
                return Err(DockerError::api("create container")(e));
            }
        };
        Ok(Self {
            id,
            shared,
            spec: spec.clone(),
            image,
            stage,
            run: Mutex::new(None),
            index: Mutex::new(None),
            sent: Mutex::new(None),
            stage_removal: Mutex::new(None),
            started: AtomicBool::new(false),
            destroyed: AtomicBool::new(false),
        })
    }

    fn run_container(&self) -> Option<String> {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    async fn exec_inner(
        &self,
        request: &ExecRequest,
        sink: &dyn ExecSink,
    ) -> Result<ExecOutcome, DockerError> {
        self.check_alive()?;
        if self.run_container().is_some() {
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
        let mut env: BTreeMap<String, String> = container::template_env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (k, v) in &request.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(format!(
                    "environment variable {k:?} cannot be passed to a process"
                ))));
            }
            env.insert(k.clone(), v.clone());
        }
        // Secrets never go into `Env` (see `secrets.rs`): the launcher receives them on stdin.
        let secrets_frame = if request.secrets.is_empty() {
            None
        } else {
            match crate::secrets::frame(&request.secrets) {
                Ok(f) => Some(f),
                Err(msg) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg))),
            }
        };
        let cmd = if secrets_frame.is_some() {
            crate::secrets::launcher_cmd(&request.argv)
        } else {
            request.argv.clone()
        };
        let path_env = env.get("PATH").cloned().unwrap_or_default();
        let working_dir = if cwd.is_empty() {
            WORKSPACE.to_owned()
        } else {
            format!("{WORKSPACE}/{cwd}")
        };
        let mut labels = container::labels(&self.id, &self.spec);
        labels.insert(LABEL_ROLE.into(), "run".into());
        let mut body = container::create_body(
            &self.shared.config,
            &self.image.id,
            cmd,
            env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir,
            labels,
            container::host_config(
                &self.shared.config,
                &self.spec.limits,
                self.spec.network,
                &self.id,
            ),
        );
        if secrets_frame.is_some() {
            container::open_stdin(&mut body);
        }
        let docker = &self.shared.docker;
        let opts = CreateContainerOptionsBuilder::new().name(&self.id).build();
        let created = docker
            .create_container(Some(opts), body)
            .await
            .map_err(DockerError::api("create container"))?;
        let run = created.id;
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.clone());
        let image_paths = exec::ImagePaths {
            docker,
            container: &run,
            image_id: &self.image.id,
            cache: &self.shared.stat_cache,
        };
        if let Err(msg) = exec::preflight(&image_paths, &index, argv0, &path_env, &cwd).await? {
            return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg)));
        }
        // The stage container has done its job (the volume is mounted by the run container
        // now): remove it while the command starts, off the critical path. `destroy` waits
        // for this and removes it again if needed.
        let docker_bg = docker.clone();
        let stage = self.stage.clone();
        *self.stage_removal.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::spawn(
            async move {
                let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build();
                if let Err(e) = docker_bg.remove_container(&stage, Some(opts)).await
                    && !is_not_found(&e)
                {
                    tracing::debug!(container = %stage, error = %e, "early removal of the stage container failed");
                }
            },
        ));
        self.started.store(true, Ordering::SeqCst);
        let observed =
            match exec::attach_start_wait(docker, &run, secrets_frame.as_deref(), sink, &self.sent)
                .await?
            {
                Started::Refused(msg) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(msg))),
                Started::Ran(o) => o,
            };
        let sent = *self.sent.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ExecOutcome::new(exec::exit_status(
            &observed,
            sent,
            self.spec.limits.memory_bytes,
        )))
    }

    async fn signal_inner(&self, signal: KillSignal) -> Result<(), DockerError> {
        // No command yet (exec not called): nothing to signal.
        let Some(run) = self.run_container() else {
            return Ok(());
        };
        {
            // Recorded even while the container is still being started: `exec` delivers a
            // signal that arrived then right after the start.
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
        match docker.kill_container(&run, Some(opts)).await {
            Ok(()) => {}
            // Not running (any more) or gone: nothing to signal.
            Err(e) if is_not_found(&e) || status_of(&e) == Some(409) => return Ok(()),
            Err(e) => return Err(DockerError::api("kill")(e)),
        }
        if signal == KillSignal::Term {
            // docker-init forwards SIGTERM to its child only; processes in other groups or
            // sessions get it from a broadcast by the sandbox user (`kill(-1)` spares pid 1
            // and the caller). SIGKILL needs none: it ends pid 1 and so the whole namespace.
            let broadcast = async {
                let exec = docker
                    .create_exec(
                        &run,
                        CreateExecOptions {
                            cmd: Some(vec![
                                "python3".to_owned(),
                                "-c".to_owned(),
                                "import os, signal\ntry:\n    os.kill(-1, signal.SIGTERM)\nexcept OSError:\n    pass".to_owned(),
                            ]),
                            user: Some(self.shared.config.user.clone()),
                            attach_stdout: Some(false),
                            attach_stderr: Some(false),
                            ..Default::default()
                        },
                    )
                    .await?;
                docker
                    .start_exec(
                        &exec.id,
                        Some(StartExecOptions {
                            detach: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map(|_| ())
            };
            match tokio::time::timeout(Duration::from_secs(5), broadcast).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(sandbox = %self.id, error = %e, "SIGTERM broadcast not delivered")
                }
                Err(_) => tracing::debug!(sandbox = %self.id, "SIGTERM broadcast timed out"),
            }
        }
        Ok(())
    }

    /// Streams a tar of the staged tree `dest` into the volume (through the stage
    /// container), owned by the sandbox user; returns the index of what was sent.
    async fn upload_staged(&self, dest: PathBuf) -> Result<WorkspaceIndex> {
        let (uid, gid) = self.shared.config.uid_gid().unwrap_or((10001, 10001));
        let (tx, rx) = mpsc::channel(4);
        let walker = tokio::task::spawn_blocking(move || {
            let mut out = upload::ChannelWriter::new(tx.clone());
            let r = upload::write_tar(&dest, uid, gid, &mut out);
            if let Err(e) = &r {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            r
        });
        let body = bollard::body_try_stream(tokio_stream_of(rx));
        let opts = UploadToContainerOptionsBuilder::new()
            .path(WORKSPACE)
            .no_overwrite_dir_non_dir("true")
            .build();
        let uploaded = self
            .shared
            .docker
            .upload_to_container(&self.stage, Some(opts), body)
            .await;
        let index = walker
            .await
            .map_err(|e| Error::backend(BACKEND, format!("staging walker failed: {e}")))?
            .map_err(|e| DockerError::Io {
                context: "reading the staged workspace".into(),
                source: e,
            })?;
        uploaded.map_err(DockerError::api("upload archive"))?;
        Ok(index)
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn isolation(&self) -> IsolationReport {
        crate::backend::isolation_report(&self.shared.config, &self.spec, &self.image)
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
                let uploaded = self.upload_staged(tree.tree_path()).await;
                let summary = tree.summary();
                tree.discard().await;
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
        // 2. Stream a tar of the staged tree into the volume, owned by the sandbox user.
        let uploaded = self
            .upload_staged(staging.proc_path().join("workspace"))
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
        let container = self.run_container().unwrap_or_else(|| self.stage.clone());
        let root = self.shared.root().map_err(|e| {
            ArtifactFailure::new(
                crownest_core::event::ArtifactErrorReason::NotFound,
                format!("{path:?}: host staging: {e}"),
            )
        })?;
        crate::download::collect(
            &self.shared.docker,
            &container,
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
        let container = self.run_container().unwrap_or_else(|| self.stage.clone());
        let name = format!("{}{KEPT_MARK}{}", self.id, until.as_millis());
        let opts = RenameContainerOptionsBuilder::new().name(&name).build();
        self.shared
            .docker
            .rename_container(&container, opts)
            .await
            .map_err(DockerError::api("rename container (keep)"))?;
        Ok(())
    }

    async fn destroy(&self) -> Result<Destroyed> {
        self.destroyed.store(true, Ordering::SeqCst);
        let pending = self
            .stage_removal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = pending {
            let _ = task.await;
        }
        let mut known = vec![self.stage.clone()];
        known.extend(self.run_container());
        crate::cleanup::remove_sandbox(&self.shared.docker, &self.id, &known).await?;
        if let Ok(root) = self.shared.root() {
            crate::cleanup::remove_host_leftovers(&root.proc_path(), &self.id);
        }
        Ok(Destroyed::Gone)
    }
}

/// A receiver as a `Stream` (without pulling in tokio-stream's wrappers).
fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Removes a host staging directory (through a tombstone; a sweep finishes what a crash cut
/// short).
async fn remove_staging(staging: &SandboxDir) {
    if let Err(e) = staging.remove(STAGING_REMOVAL_WAIT).await {
        tracing::warn!(staging = %staging.host_path().display(), error = %e, "removing the host staging directory failed; a sweep retries");
    }
}
