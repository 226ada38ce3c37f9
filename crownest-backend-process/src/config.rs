//! [`ProcessConfig`]: where sandboxes live, how processes are contained, what the template
//! environment is.

use std::path::PathBuf;
use std::time::Duration;

/// How the commands of a sandbox are contained. [`Containment::Auto`] (the default) probes
/// once, at [`crate::ProcessBackend::new`], and takes the strongest that works here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Containment {
    /// The first that works of: `PidNamespace`, `UserNamespace`, `Cgroup`, `ProcessGroup`.
    #[default]
    Auto,
    /// A new PID namespace (needs `CAP_SYS_ADMIN`, i.e. root). A tiny init is PID 1; when
    /// the command exits, or the init is killed, the kernel kills every process left in the
    /// namespace, including `setsid` daemons and double forks.
    PidNamespace,
    /// A new user namespace (identity-mapped uid/gid) owning a new PID namespace: the same
    /// guarantees as `PidNamespace` for an unprivileged host process, where the kernel
    /// allows unprivileged user namespaces. The command drops the capabilities it would
    /// hold in that namespace (as everywhere the backend has privilege to drop).
    UserNamespace,
    /// A cgroup v2 per exec, killed with `cgroup.kill` (Linux ≥ 5.14): every process of the
    /// command, wherever it moved in the process tree, dies at once.
    Cgroup,
    /// The process group only, with a `/proc` scan for descendants (every 50 ms while the
    /// command runs). A process that leaves the group and is orphaned between two scans is
    /// not seen; any process seen and still alive after the final kill is reported as a
    /// survivor.
    ProcessGroup,
}

/// Configuration of a [`crate::ProcessBackend`]. `ProcessConfig::default()`:
///
/// | field | default |
/// |---|---|
/// | `root` | [`WorkRoot::default_path`](crownest_core::hostdir::WorkRoot::default_path)`("process")`: `$XDG_RUNTIME_DIR/crownest/process` when set, else `/dev/shm/crownest-<euid>/process` (tmpfs), else `<temp dir>/crownest-<euid>/process`; a private work root, refused when another user could change it |
/// | `removal_wait` | 1 s: how long `destroy` waits for the sandbox's files to be deleted before it lets the deletion finish in the background (`removalPending` in the evidence) |
/// | `containment` | [`Containment::Auto`] |
/// | `path` | `/usr/local/bin:/usr/bin:/bin` (the `PATH` of commands, and where `python3`/`node` are resolved) |
/// | `templates` | none besides `python-node` (on `path`); [`ProcessConfig::with_template`] adds one: a name → the `PATH` its commands get and its `python3`/`node` are resolved on |
/// | `isolate_network` | `true`: with a namespace containment, `network: none` runs get a new, empty network namespace (no interfaces, loopback down) |
/// | `cgroup_parent` | `None`: auto-detected (`<cgroup2 mount>/crownest`, else this process's own cgroup) |
/// | `drain_timeout` | 2 s: after the command exited, how long output may stay idle before the pipes are abandoned |
/// | `kill_confirm_timeout` | 5 s: how long `destroy` and the end of `exec` wait for killed processes to be gone |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Per-run sandbox directories live here (`<root>/<run id>-<random>/`).
    pub root: PathBuf,
    /// Process containment to use.
    pub containment: Containment,
    /// `PATH` of the commands (the template's), also used to resolve `python3` and `node`.
    pub path: String,
    /// More templates: name → the `PATH` of their commands (`python3` required on it,
    /// `node` optional, as for `python-node`). A name given here replaces `python-node`.
    pub templates: std::collections::BTreeMap<String, String>,
    /// Give `network: none` runs an empty network namespace (namespace containment only).
    pub isolate_network: bool,
    /// The cgroup v2 directory under which per-exec cgroups are made (cgroup containment).
    pub cgroup_parent: Option<PathBuf>,
    /// Idle time allowed on the output pipes after the command exited.
    pub drain_timeout: Duration,
    /// How long to wait for killed processes to be gone.
    pub kill_confirm_timeout: Duration,
    /// How long `destroy` waits for the deletion of the sandbox's files (the directory is
    /// unreachable at once; the deletion goes on in the background after this, and the
    /// evidence says `removalPending`). Zero: never waited for in `destroy`; the run's
    /// terminal commit overlaps the deletion, and the backend's `shutdown` waits for it
    /// (what the `crownest` CLI sets).
    pub removal_wait: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            root: default_root(),
            containment: Containment::Auto,
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            templates: std::collections::BTreeMap::new(),
            isolate_network: true,
            cgroup_parent: None,
            drain_timeout: Duration::from_secs(2),
            kill_confirm_timeout: Duration::from_secs(5),
            removal_wait: Duration::from_secs(1),
        }
    }
}

impl ProcessConfig {
    /// Serves the template `name` with the interpreters found on `path` (a host
    /// application's own toolchain, e.g. `/opt/py312/bin:/usr/bin:/bin`); its commands get
    /// that `PATH`, and its identity records the resolved `python3`/`node` and versions.
    pub fn with_template(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.templates.insert(name.into(), path.into());
        self
    }

    /// Every template served: `python-node` on [`ProcessConfig::path`], then
    /// [`ProcessConfig::templates`] (which may replace it).
    pub(crate) fn all_templates(&self) -> std::collections::BTreeMap<String, String> {
        let mut all = std::collections::BTreeMap::from([(
            crate::template::PYTHON_NODE.to_owned(),
            self.path.clone(),
        )]);
        all.extend(self.templates.clone());
        all
    }

    /// The default configuration with sandboxes under `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// Sets the containment.
    pub fn containment(mut self, containment: Containment) -> Self {
        self.containment = containment;
        self
    }
}

fn default_root() -> PathBuf {
    crownest_core::hostdir::WorkRoot::default_path(crate::BACKEND)
}
