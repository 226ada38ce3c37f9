//! cgroup v2 containment: one cgroup per exec, killed atomically with `cgroup.kill`.

use std::io;
use std::path::{Path, PathBuf};

/// The cgroup v2 mount point, if any (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// This process's own cgroup v2 path (relative to the mount).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_owned())
}

/// Candidate parents for per-exec cgroups, most preferred first.
pub(crate) fn candidate_parents(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let Some(mount) = cgroup2_mount() else {
        return Vec::new();
    };
    let mut out = vec![mount.join("crownest")];
    if let Some(own) = own_cgroup().filter(|o| !o.is_empty()) {
        out.push(mount.join(own).join("crownest"));
    }
    out
}

/// One cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cgroup {
    pub(crate) path: PathBuf,
}

impl Cgroup {
    /// Creates `<parent>/<name>` (and the parent when missing); fails unless `cgroup.kill`
    /// is available there.
    pub(crate) fn create(parent: &Path, name: &str) -> io::Result<Self> {
        std::fs::create_dir_all(parent)?;
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let cg = Self { path };
        if !cg.path.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&cg.path);
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cgroup.kill is not available (Linux < 5.14?)",
            ));
        }
        Ok(cg)
    }

    /// `cgroup.procs` of this cgroup.
    pub(crate) fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids in the cgroup.
    pub(crate) fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends `sig` to every process in the cgroup.
    pub(crate) fn signal(&self, sig: rustix::process::Signal) {
        for pid in self.pids() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }

    /// Kills every process in the cgroup at once.
    pub(crate) fn kill(&self) -> io::Result<()> {
        match std::fs::write(self.path.join("cgroup.kill"), b"1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True when no process is left (`cgroup.events` says `populated 0`).
    pub(crate) fn empty(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(t) => t.lines().any(|l| l.trim() == "populated 0"),
            Err(_) => !self.path.exists(),
        }
    }

    /// Removes the (empty) cgroup directory.
    pub(crate) fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
