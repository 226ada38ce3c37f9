//! One sandbox directory under a [`WorkRoot`]: the marker every host-directory backend
//! writes, the crash-safe create (built under `.creating-<pid>-<start>-<name>`, renamed into
//! place complete) and the removal (renamed to a `.removing-` tombstone at once, deleted in
//! the background). Everything goes through the directory's descriptor, opened once.

use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};

use super::remove::{TOMBSTONE_PREFIX, remove_tree};
use super::root::{WorkRoot, proc_fd_path};
use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::ownership::{self, RunOwner};
use crate::time::Timestamp;

/// File name of the marker inside a sandbox directory (outside the workspace, so a command
/// confined to the workspace can neither read nor forge it).
pub const MARKER_FILE: &str = "crownest-sandbox.json";
/// Name prefix of a sandbox directory being built: `.creating-<pid>-<start ticks>-<name>`.
pub const CREATING_PREFIX: &str = ".creating-";

/// The marker of a sandbox directory: which backend, run, engine and process own it, until
/// when it is kept, and backend-specific state (e.g. the processes it last ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// `crownest.sandbox/v1`.
    pub schema: String,
    /// The backend that made it (a sweep only touches its own).
    pub backend: String,
    /// The run.
    pub run_id: String,
    /// The engine instance.
    pub instance: String,
    /// The owning process.
    pub owner: RunOwner,
    /// When it was made.
    pub created: Timestamp,
    /// Set when the sandbox is kept: a sweep destroys it after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until: Option<Timestamp>,
    /// Backend-specific state.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub state: serde_json::Value,
}

impl Marker {
    /// The schema name written in every marker.
    pub const SCHEMA: &'static str = "crownest.sandbox/v1";

    /// A fresh marker.
    pub fn new(backend: &str, run_id: &RunId, instance: &str, owner: RunOwner) -> Self {
        Self {
            schema: Self::SCHEMA.into(),
            backend: backend.into(),
            run_id: run_id.to_string(),
            instance: instance.into(),
            owner,
            created: Timestamp::now(),
            keep_until: None,
            state: serde_json::Value::Null,
        }
    }

    /// True when a sweep may destroy this sandbox: [`ownership::is_orphan`] with its
    /// owner's liveness, its run and its keep deadline.
    pub fn is_orphan(&self, live: &[RunId], now: Timestamp) -> bool {
        ownership::is_orphan(
            self.owner.liveness(),
            Some(&self.run_id),
            self.keep_until,
            live,
            now,
        )
    }
}

/// Whether a removal finished within its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Nothing of the directory is left.
    Done,
    /// The directory is unreachable (renamed to a tombstone) and is being deleted in the
    /// background; a sweep deletes any tombstone a crash left.
    Pending,
}

/// One sandbox directory, opened once; every operation is relative to its descriptor.
#[derive(Debug)]
pub struct SandboxDir {
    root: WorkRoot,
    name: String,
    fd: OwnedFd,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn owner_tag(owner: &RunOwner) -> String {
    format!("{}-{}", owner.pid, owner.pid_start.unwrap_or(0))
}

/// The owner encoded in a `<prefix><pid>-<start>-...` name.
pub(crate) fn owner_in_name(name: &str, prefix: &str) -> Option<RunOwner> {
    let rest = name.strip_prefix(prefix)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    Some(RunOwner {
        instance: String::new(),
        pid,
        pid_start: (start != 0).then_some(start),
    })
}

impl SandboxDir {
    /// Creates `<root>/<run id>-<random>/` (mode 0700): built under
    /// `.creating-<pid>-<start>-<name>` with its marker, then `build` adds the backend's
    /// layout through the new directory's descriptor, then it is renamed into place (never
    /// replacing anything). A creator killed half-way leaves only a `.creating-` directory,
    /// which a sweep removes once that process is gone.
    pub fn create(
        root: &WorkRoot,
        marker: &Marker,
        build: impl FnOnce(&SandboxDir) -> io::Result<()>,
    ) -> Result<Self> {
        let name = format!("{}-{:08x}", marker.run_id, rand::random::<u32>());
        let building = format!("{CREATING_PREFIX}{}-{name}", owner_tag(&marker.owner));
        let context = || format!("creating sandbox {name} in {}", root.path().display());
        rustix::fs::mkdirat(root.fd(), building.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| Error::io(context(), e.into()))?;
        let made = (|| -> io::Result<OwnedFd> {
            let fd = rustix::fs::openat(root.fd(), building.as_str(), DIR_FLAGS, Mode::empty())?;
            let dir = SandboxDir {
                root: root.clone(),
                name: name.clone(),
                fd,
            };
            dir.write_marker(marker)?;
            build(&dir)?;
            rustix::fs::renameat_with(
                root.fd(),
                building.as_str(),
                root.fd(),
                name.as_str(),
                RenameFlags::NOREPLACE,
            )?;
            Ok(dir.fd)
        })();
        match made {
            Ok(fd) => Ok(Self {
                root: root.clone(),
                name,
                fd,
            }),
            Err(e) => {
                let _ = remove_tree(&root.proc_path().join(&building));
                Err(Error::io(context(), e))
            }
        }
    }

    /// The directory's name under the root (also the sandbox id of the process and WASI
    /// backends).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root it lives in.
    pub fn root(&self) -> &WorkRoot {
        &self.root
    }

    /// Its descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `/proc/self/fd/<n>`: names exactly this directory in this process (for APIs that take
    /// a path; not valid in a spawned command).
    pub fn proc_path(&self) -> PathBuf {
        proc_fd_path(&self.fd)
    }

    /// Where it is on the host (for messages and for the environment of a host command).
    pub fn host_path(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    /// Makes the subdirectory `name` (one component) with `mode`.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Opens the subdirectory `rel` (components separated by `/`), never following a
    /// symlink.
    pub fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        let mut fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        for c in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            fd = rustix::fs::openat(&fd, c, DIR_FLAGS, Mode::empty())?;
        }
        Ok(fd)
    }

    /// Writes the file `rel` (inside an existing subdirectory, never through a symlink)
    /// with `mode`, replacing it atomically.
    pub fn write_file(&self, rel: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (dir, file) = match rel.rsplit_once('/') {
            Some((d, f)) => (self.open_dir(d)?, f),
            None => (self.open_dir(".")?, rel),
        };
        let tmp = format!(".{file}.tmp");
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes)?;
        drop(f);
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, file)?;
        Ok(())
    }

    /// Rewrites the marker atomically.
    pub fn write_marker(&self, marker: &Marker) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
        self.write_file(MARKER_FILE, &bytes, 0o600)
    }

    /// Reads the marker of this directory.
    pub fn read_marker(&self) -> io::Result<Marker> {
        read_marker_at(self.fd.as_fd())
    }

    /// Removes the directory: renamed to `.removing-<name>` at once (from then on nothing
    /// can reach it under its name), then deleted on a blocking thread. Waits up to `wait`
    /// for the deletion: [`Removal::Done`] when it finished, [`Removal::Pending`] when it
    /// goes on in the background (at once for a zero `wait`; the root's
    /// [`WorkRoot::removals_settled`] waits for it). Removing an already removed sandbox is
    /// `Done`.
    pub async fn remove(&self, wait: Duration) -> io::Result<Removal> {
        let tombstone = format!("{TOMBSTONE_PREFIX}{}", self.name);
        match rustix::fs::renameat(
            self.root.fd(),
            self.name.as_str(),
            self.root.fd(),
            tombstone.as_str(),
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => {
                // Renamed already (an earlier call): finish or wait for that removal.
                if rustix::fs::statat(
                    self.root.fd(),
                    tombstone.as_str(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .is_err()
                {
                    return Ok(Removal::Done);
                }
            }
            Err(e) => return Err(e.into()),
        }
        let root = self.root.clone();
        let in_flight = root.removal_started();
        let task = tokio::task::spawn_blocking(move || {
            let r = remove_tree(&root.proc_path().join(&tombstone));
            if let Err(e) = &r {
                tracing::warn!(tombstone = %root.path().join(&tombstone).display(), error = %e, "background removal of a sandbox failed; a sweep retries");
            }
            drop(in_flight);
            r
        });
        if wait.is_zero() {
            // Not waited for at all (the caller records the removal as pending and waits
            // for it later, through `WorkRoot::removals_settled`).
            return Ok(Removal::Pending);
        }
        match tokio::time::timeout(wait, task).await {
            Ok(Ok(r)) => r.map(|()| Removal::Done),
            Ok(Err(e)) => Err(io::Error::other(format!("the removal task failed: {e}"))),
            Err(_) => Ok(Removal::Pending),
        }
    }
}

/// Reads the marker in the directory `dir`.
pub(crate) fn read_marker_at(dir: BorrowedFd<'_>) -> io::Result<Marker> {
    let fd = rustix::fs::openat(
        dir,
        MARKER_FILE,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size > 1 << 20 {
        return Err(io::Error::other("the marker is not a small regular file"));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}
