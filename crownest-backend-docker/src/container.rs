//! Container shape: labels, names and the hardened `HostConfig` every container gets.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use crownest_core::run::RunOwner;
use crownest_core::{Limits, Network, SandboxSpec};

use crate::config::DockerConfig;

/// Sandbox id (also the name of its volume and its run container).
pub const LABEL_SANDBOX: &str = "crownest.sandbox";
/// The run the sandbox belongs to.
pub const LABEL_RUN: &str = "crownest.run_id";
/// The engine instance that created it.
pub const LABEL_INSTANCE: &str = "crownest.instance";
/// Pid of the owning host process.
pub const LABEL_OWNER_PID: &str = "crownest.owner_pid";
/// Start time (clock ticks since boot) of the owning host process.
pub const LABEL_OWNER_START: &str = "crownest.owner_start";
/// `stage` (holds the volume while the archive is uploaded) or `run` (runs the command).
pub const LABEL_ROLE: &str = "crownest.role";

/// Marker in a container name that records the keep deadline (labels are immutable, so
/// `keep()` renames the container to `<sandbox>.kept-until-<unix ms>`).
pub(crate) const KEPT_MARK: &str = ".kept-until-";

/// The mount point of the workspace volume inside every container.
pub(crate) const WORKSPACE: &str = "/workspace";

/// The labels of every resource of a sandbox.
pub(crate) fn labels(sandbox: &str, spec: &SandboxSpec) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(LABEL_SANDBOX.to_owned(), sandbox.to_owned());
    l.insert(LABEL_RUN.to_owned(), spec.run_id.to_string());
    l.insert(LABEL_INSTANCE.to_owned(), spec.instance.clone());
    l.insert(LABEL_OWNER_PID.to_owned(), spec.owner.pid.to_string());
    if let Some(start) = spec.owner.pid_start {
        l.insert(LABEL_OWNER_START.to_owned(), start.to_string());
    }
    l
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

/// The hardened host configuration (see the crate docs for why each line is there).
pub(crate) fn host_config(
    config: &DockerConfig,
    limits: &Limits,
    network: Network,
    volume: &str,
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
        // Filesystem: read-only image, private tmpfs /tmp, the workspace volume; no host path.
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        mounts: Some(vec![Mount {
            target: Some(WORKSPACE.into()),
            source: Some(volume.to_owned()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            ..Default::default()
        }]),
        // Network and namespaces.
        network_mode: Some(network_mode),
        ipc_mode: Some("private".into()),
        // docker-init (tini) as pid 1: reaps zombies and forwards signals to the command.
        init: Some(true),
        // Output is attached, never logged to the daemon's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        auto_remove: Some(false),
        ..Default::default()
    }
}

/// Gives a run container a stdin that the engine writes to (the secrets frame, see
/// `secrets.rs`); without this the container's stdin is `/dev/null`.
pub(crate) fn open_stdin(body: &mut ContainerCreateBody) {
    body.open_stdin = Some(true);
    body.attach_stdin = Some(true);
    body.stdin_once = Some(false);
}

/// The create body of a container of this sandbox.
pub(crate) fn create_body(
    config: &DockerConfig,
    image_id: &str,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    labels: HashMap<String, String>,
    host_config: HostConfig,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image_id.to_owned()),
        user: Some(config.user.clone()),
        hostname: Some("sandbox".into()),
        entrypoint: Some(Vec::new()),
        cmd: Some(cmd),
        env: Some(env),
        working_dir: Some(working_dir),
        labels: Some(labels),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        tty: Some(false),
        network_disabled: None,
        host_config: Some(host_config),
        ..Default::default()
    }
}
