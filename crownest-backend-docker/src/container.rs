//! Container shape: labels, names and the hardened `HostConfig` every container gets, and
//! the one call that creates a sandbox container with everything set.

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountType, MountVolumeOptions, ResourcesUlimits,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
use crownest_core::run::RunOwner;
use crownest_core::{Limits, Network, SandboxSpec};
use tokio::io::AsyncWriteExt as _;

use crate::config::DockerConfig;
use crate::error::DockerError;

/// Sandbox id (also the name of its container).
pub const LABEL_SANDBOX: &str = "crownest.sandbox";
/// The run the sandbox belongs to (absent on a warm pool member: it was created before its
/// run existed).
pub const LABEL_RUN: &str = "crownest.run_id";
/// The engine instance that created it.
pub const LABEL_INSTANCE: &str = "crownest.instance";
/// Pid of the owning host process.
pub const LABEL_OWNER_PID: &str = "crownest.owner_pid";
/// Start time (clock ticks since boot) of the owning host process.
pub const LABEL_OWNER_START: &str = "crownest.owner_start";
/// `run`: the container that receives the workspace and runs the command (older versions
/// also had a `stage` container).
pub const LABEL_ROLE: &str = "crownest.role";
/// On a warm pool member: the template it was created for (see `pool.rs`).
pub const LABEL_POOL: &str = "crownest.pool";

/// Marker in a container name that records the keep deadline (labels are immutable, so
/// `keep()` renames the container to `<sandbox>.kept-until-<unix ms>`).
pub(crate) const KEPT_MARK: &str = ".kept-until-";

/// The name `keep()` gives the container of sandbox `sandbox` kept until `until_ms` (unix
/// milliseconds): `<sandbox>.kept-until-<until_ms>`, e.g. for `docker cp NAME:/workspace .`.
pub fn kept_container_name(sandbox: &str, until_ms: i64) -> String {
    format!("{sandbox}{KEPT_MARK}{until_ms}")
}

/// The mount point of the workspace volume inside every container.
pub(crate) const WORKSPACE: &str = "/workspace";

/// The labels of every resource of a sandbox created for `spec`.
pub(crate) fn labels(sandbox: &str, spec: &SandboxSpec) -> HashMap<String, String> {
    let mut l = owner_labels(sandbox, &spec.owner);
    l.insert(LABEL_RUN.to_owned(), spec.run_id.to_string());
    l
}

/// The labels that name a sandbox and its owner (process and engine instance).
pub(crate) fn owner_labels(sandbox: &str, owner: &RunOwner) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(LABEL_SANDBOX.to_owned(), sandbox.to_owned());
    l.insert(LABEL_ROLE.to_owned(), "run".to_owned());
    l.insert(LABEL_INSTANCE.to_owned(), owner.instance.clone());
    l.insert(LABEL_OWNER_PID.to_owned(), owner.pid.to_string());
    if let Some(start) = owner.pid_start {
        l.insert(LABEL_OWNER_START.to_owned(), start.to_string());
    }
    l
}

/// A new sandbox id (also its container's name).
pub(crate) fn new_sandbox_id() -> String {
    format!("crownest-{}", uuid::Uuid::new_v4().simple())
}

/// The owner recorded in a resource's labels (`None` when the labels are incomplete).
pub(crate) fn owner_of(labels: &HashMap<String, String>) -> Option<RunOwner> {
    Some(RunOwner {
        instance: labels.get(LABEL_INSTANCE).cloned().unwrap_or_default(),
        pid: labels.get(LABEL_OWNER_PID)?.parse().ok()?,
        pid_start: labels.get(LABEL_OWNER_START).and_then(|s| s.parse().ok()),
    })
}

/// The keep deadline (unix ms) encoded in a container name, if it was kept.
pub(crate) fn kept_until_of(name: &str) -> Option<i64> {
    let (_, ms) = name.rsplit_once(KEPT_MARK)?;
    ms.parse().ok()
}

/// The environment every command gets before the request's own variables (which win).
pub(crate) fn template_env() -> [(&'static str, &'static str); 3] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", WORKSPACE),
        ("LANG", "C.UTF-8"),
    ]
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The hardened host configuration (see the crate docs for why each line is there); the
/// workspace is the host directory `bound` (`place.rs`) or else an anonymous volume.
pub(crate) fn host_config(
    config: &DockerConfig,
    limits: &Limits,
    network: Network,
    labels: &HashMap<String, String>,
    bound: Option<&str>,
) -> HostConfig {
    let mut tmpfs = HashMap::new();
    tmpfs.insert(
        "/tmp".to_owned(),
        format!("rw,nosuid,nodev,size={},mode=1777", config.tmp_size_bytes),
    );
    let network_mode = match network {
        Network::None => "none".to_owned(),
        Network::Enabled => config.enabled_network_mode.clone(),
    };
    HostConfig {
        // Resources.
        memory: Some(clamp(limits.memory_bytes)),
        memory_swap: Some(clamp(limits.memory_bytes)),
        pids_limit: Some(clamp(limits.pids)),
        ulimits: Some(vec![
            ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(clamp(limits.open_files)),
                hard: Some(clamp(limits.open_files)),
            },
            ResourcesUlimits {
                name: Some("core".into()),
                soft: Some(0),
                hard: Some(0),
            },
        ]),
        // Privileges.
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        // Filesystem: read-only image, private tmpfs /tmp, the workspace either a
        // directory of the private work root made for this sandbox (its only host path,
        // `place.rs`) or an anonymous volume (created with the container, removed with it;
        // labelled like it, so a sweep finds one a crash left).
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        mounts: Some(vec![workspace_mount(bound, labels)]),
        // Network and namespaces.
        network_mode: Some(network_mode),
        ipc_mode: Some("private".into()),
        // No docker-init: the launcher is pid 1; it reaps while the command runs and
        // passes `SIGTERM` on (`launcher.rs`, "Signals").
        init: Some(false),
        // Output is attached, never logged to the daemon's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        auto_remove: Some(false),
        ..Default::default()
    }
}

/// The mount of `/workspace`: a bind of `bound`, or an anonymous labelled volume.
fn workspace_mount(bound: Option<&str>, labels: &HashMap<String, String>) -> Mount {
    match bound {
        Some(source) => Mount {
            target: Some(WORKSPACE.into()),
            source: Some(source.to_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        },
        None => Mount {
            target: Some(WORKSPACE.into()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            volume_options: Some(MountVolumeOptions {
                labels: Some(labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The create body of a sandbox container: the [launcher](crate::launcher) waiting for its
/// command on stdin, the template's environment, the hardened host configuration.
pub(crate) fn create_body(
    config: &DockerConfig,
    image_id: &str,
    labels: HashMap<String, String>,
    host_config: HostConfig,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image_id.to_owned()),
        user: Some(config.user.clone()),
        hostname: Some("sandbox".into()),
        entrypoint: Some(Vec::new()),
        cmd: Some(crate::launcher::cmd()),
        env: Some(
            template_env()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        working_dir: Some(WORKSPACE.into()),
        labels: Some(labels),
        // The launcher reads its frame from stdin (see `launcher.rs`).
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        network_disabled: None,
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// What a sandbox container is made of.
#[derive(Clone)]
pub(crate) struct Shape<'a> {
    /// The sandbox id: the container's name and `crownest.sandbox` label.
    pub(crate) sandbox: &'a str,
    /// Every label (see [`labels`], [`owner_labels`]).
    pub(crate) labels: HashMap<String, String>,
    /// The template image id.
    pub(crate) image_id: &'a str,
    /// The resource limits.
    pub(crate) limits: &'a Limits,
    /// The network mode.
    pub(crate) network: Network,
    /// The host directory bound at `/workspace` (`place.rs`); `None`: an anonymous volume.
    pub(crate) bound: Option<String>,
}

/// A sandbox container's launcher, attached before the container started, with the
/// workspace offer (`W <nonce>`, step 0 of [`crate::launcher`]) already written: its
/// answer waits in the stream, so the hand-over costs no attach and no round trip once the
/// tree is ready.
#[derive(Debug)]
pub(crate) struct Offered {
    /// The attachment (stdin, stdout, stderr), made before `start`, so nothing the
    /// launcher writes is missed.
    pub(crate) attached: AttachContainerResults,
    /// The nonce of the offer written on it.
    pub(crate) nonce: String,
}

/// The start of a container, in flight: awaited (any number of times) before its
/// launcher is needed. On failure the container was removed (best effort).
pub(crate) type Starting =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<(), String>>>;

/// A created sandbox container, started or starting.
#[derive(Debug)]
pub(crate) struct Created {
    /// The container id.
    pub(crate) id: String,
    /// Its launcher with the workspace offered; `None` when attaching before the start
    /// failed (the hand-over then attaches, as for any container), or when the workspace
    /// is written from the host (`place.rs`).
    pub(crate) offered: Option<Offered>,
    /// Its start, when [`create_starting`] left it in flight.
    pub(crate) starting: Option<Starting>,
    /// Attached before the start without an offer (the workspace is written from the
    /// host): the command's attachment, one round trip sooner.
    pub(crate) attached: Option<AttachContainerResults>,
}

/// Creates the sandbox container with everything set in one call (the workspace volume is
/// created with it), attaches to it and offers the workspace (unless `offer_workspace` is
/// false), and starts it: the launcher then answers the offer and waits. On failure
/// nothing of it is left (best effort; a sweep removes the rest).
pub(crate) async fn create_started(
    docker: &Docker,
    config: &DockerConfig,
    shape: Shape<'_>,
    offer_workspace: bool,
) -> Result<Created, DockerError> {
    let mut created = create_starting(docker, config, shape, offer_workspace).await?;
    if let Some(start) = created.starting.take() {
        start.await.map_err(DockerError::State)?;
    }
    Ok(created)
}

/// [`create_started`] without waiting for the start: the container is created (its
/// workspace volume with it, so the workspace can be written from the host while it
/// starts, `place.rs`) and its start is left in flight ([`Created::starting`]); a start
/// that fails removes the container.
pub(crate) async fn create_starting(
    docker: &Docker,
    config: &DockerConfig,
    shape: Shape<'_>,
    offer_workspace: bool,
) -> Result<Created, DockerError> {
    let sandbox = shape.sandbox.to_owned();
    let host = host_config(
        config,
        shape.limits,
        shape.network,
        &shape.labels,
        shape.bound.as_deref(),
    );
    let body = create_body(config, shape.image_id, shape.labels, host);
    let opts = CreateContainerOptionsBuilder::new()
        .name(shape.sandbox)
        .build();
    let id = docker
        .create_container(Some(opts), body)
        .await
        .map_err(DockerError::api("create container"))?
        .id;
    let (offered, attached) = if offer_workspace {
        match offer(docker, &id).await {
            Ok(o) => (Some(o), None),
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "attaching before the start failed; the hand-over attaches later");
                (None, None)
            }
        }
    } else {
        // Attached before the start as `docker run` does (the launcher writes nothing
        // before its frame); a failure only means `exec` attaches later.
        (
            None,
            crate::exec::attach(docker, &id)
                .await
                .ok()
                .and_then(Result::ok),
        )
    };
    let start = {
        let docker = docker.clone();
        let id = id.clone();
        async move {
            if let Err(e) = docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
            {
                let _ =
                    crate::cleanup::remove_sandbox(&docker, &sandbox, std::slice::from_ref(&id))
                        .await;
                return Err(
                    crownest_core::Error::from(DockerError::api("start container")(e)).chain(),
                );
            }
            Ok(())
        }
    };
    // Spawned, so the start goes on whoever awaits it (or nobody, if the sandbox is
    // destroyed first: the removal then waits for Docker's container lock).
    let task = tokio::spawn(start);
    let starting: Starting = futures::FutureExt::shared(futures::FutureExt::boxed(async move {
        task.await
            .unwrap_or_else(|e| Err(format!("the container's start task failed: {e}")))
    }));
    Ok(Created {
        id,
        offered,
        starting: Some(starting),
        attached,
    })
}

/// Attaches to a container (before its start) and writes the workspace offer.
pub(crate) async fn offer(docker: &Docker, container: &str) -> Result<Offered, DockerError> {
    let mut attached = match crate::exec::attach(docker, container).await? {
        Ok(a) => a,
        Err(message) => return Err(DockerError::WorkspaceTransfer { detail: message }),
    };
    let nonce = crate::launcher::new_nonce();
    let written = async {
        attached
            .input
            .write_all(format!("W {nonce}\n").as_bytes())
            .await?;
        attached.input.flush().await
    };
    written.await.map_err(|source| DockerError::Io {
        context: "offering the workspace to the launcher".into(),
        source,
    })?;
    Ok(Offered { attached, nonce })
}

/// Creates a sandbox container of `shape` as [`create_starting`] (`leave_starting`, only
/// when its workspace is bound) or [`create_started`] do, with its workspace bound from a
/// new directory of the work root (`place.rs`, marked with `marker`) when workspaces are
/// bound, else on an anonymous volume offered to the launcher. A create that fails
/// removes the directory; one that the daemon refuses because it cannot see the
/// directory turns binds off for this backend and is made again with a volume.
pub(crate) async fn create_sandbox(
    shared: &crate::backend::Shared,
    mut shape: Shape<'_>,
    marker: crownest_core::hostdir::Marker,
    leave_starting: bool,
) -> Result<
    (
        Created,
        Option<std::sync::Arc<crownest_core::hostdir::SandboxDir>>,
    ),
    DockerError,
> {
    let owner = shared.config.uid_gid();
    let bound = match (shared.bind_root(), owner) {
        (Some((root, base)), Some(owner)) => {
            let sandbox = shape.sandbox.to_owned();
            let dir = tokio::task::spawn_blocking(move || {
                crate::place::create_bound(&root, marker, &sandbox, owner)
            })
            .await
            .map_err(|e| DockerError::State(format!("the workspace directory task failed: {e}")))?
            .map_err(|e| DockerError::State(e.chain()))?;
            shape.bound = Some(crate::place::bound_path(&base, &dir));
            Some(std::sync::Arc::new(dir))
        }
        _ => None,
    };
    let retry = bound.is_some().then(|| shape.clone());
    let created = match (&bound, leave_starting) {
        (Some(_), true) => create_starting(&shared.docker, &shared.config, shape, false).await,
        (Some(_), false) => create_started(&shared.docker, &shared.config, shape, false).await,
        (None, _) => create_started(&shared.docker, &shared.config, shape, true).await,
    };
    match (created, bound) {
        (Ok(created), bound) => Ok((created, bound)),
        (Err(e), None) => Err(e),
        (Err(e), Some(dir)) => {
            remove_bound(&dir, std::time::Duration::ZERO).await;
            match retry {
                Some(mut shape) if bind_unseen(&e) => {
                    tracing::warn!(dir = %dir.host_path().display(), "the Docker engine does not see this host's work root: workspaces go on volumes from now on");
                    shared
                        .binds
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    shape.bound = None;
                    let created =
                        create_started(&shared.docker, &shared.config, shape, true).await?;
                    Ok((created, None))
                }
                _ => Err(e),
            }
        }
    }
}

/// True when the daemon refused a create because the bind's source does not exist *for
/// it*: a daemon in another mount namespace (a socket shared into a container) does not
/// see this host's work root.
fn bind_unseen(e: &DockerError) -> bool {
    matches!(e, DockerError::Api { source, .. }
        if source.to_string().contains("bind source path does not exist"))
}

/// Deletes a bound workspace directory (through a tombstone; waits up to `wait`, the work
/// root counts what goes on in the background); true when nothing of it is left.
pub(crate) async fn remove_bound(
    dir: &crownest_core::hostdir::SandboxDir,
    wait: std::time::Duration,
) -> bool {
    match dir.remove(wait).await {
        Ok(crownest_core::hostdir::Removal::Done) => true,
        Ok(crownest_core::hostdir::Removal::Pending) => false,
        Err(e) => {
            tracing::warn!(dir = %dir.host_path().display(), error = %e, "removing a bound workspace directory failed; a sweep retries");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_bind_the_daemon_cannot_see_is_told_from_other_create_failures() {
        let refused = |message: &str| {
            DockerError::api("create container")(
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 400,
                    message: message.to_owned(),
                },
            )
        };
        // What dockerd 20.10 answers when the source is missing in its mount namespace.
        assert!(bind_unseen(&refused(
            "invalid mount config for type \"bind\": bind source path does not exist: /w/x/workspace"
        )));
        assert!(!bind_unseen(&refused(
            "Conflict. The container name is already in use"
        )));
        assert!(!bind_unseen(&DockerError::State(
            "bind source path does not exist".into()
        )));
    }

    #[test]
    fn the_workspace_is_a_bind_or_a_labelled_volume() {
        let labels = HashMap::from([(LABEL_SANDBOX.to_owned(), "s".to_owned())]);
        let bind = workspace_mount(Some("/root/work/d/workspace"), &labels);
        assert_eq!(bind.typ, Some(MountType::BIND));
        assert_eq!(bind.source.as_deref(), Some("/root/work/d/workspace"));
        assert_eq!(bind.target.as_deref(), Some(WORKSPACE));
        assert_eq!(bind.read_only, Some(false));
        assert!(bind.volume_options.is_none());
        let volume = workspace_mount(None, &labels);
        assert_eq!(volume.typ, Some(MountType::VOLUME));
        assert!(volume.source.is_none(), "anonymous");
        assert_eq!(volume.volume_options.unwrap().labels, Some(labels));
    }
}
