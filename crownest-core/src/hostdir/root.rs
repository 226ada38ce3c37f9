//! The private work root: where host-directory sandboxes (process, WASI) and host staging
//! (Docker) live. One rule, checked once at open, for every backend:
//!
//! * the root is a real directory (never a symlink), owned by the effective uid, and not
//!   writable by group or others; missing components are created with mode 0700;
//! * every directory on the way to it is owned by root or the effective uid, and is not
//!   writable by group or others unless it is sticky (`/tmp`, `/dev/shm`); a symlink on
//!   the way is followed only when root or the effective uid owns it;
//! * the path is walked one component at a time from `/` with `O_NOFOLLOW` and every
//!   check is made on the opened descriptor (`fstat`), so nothing can be swapped between
//!   the check and the use;
//! * the root is then used only through that descriptor ([`WorkRoot::proc_path`] names it
//!   as `/proc/self/fd/<n>` for APIs that take a path), so renaming the root or any of its
//!   parents afterwards cannot redirect a sandbox into another directory.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Symlinks followed while resolving a root before giving up (as the kernel's `ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// An opened private work root. Cheap to clone (the descriptor, and the count of deletions
/// still running in the background, are shared by the clones).
#[derive(Debug, Clone)]
pub struct WorkRoot {
    path: PathBuf,
    fd: Arc<OwnedFd>,
    removals: Arc<tokio::sync::watch::Sender<usize>>,
}

/// Counts one background deletion of a directory of a [`WorkRoot`] while it lives.
#[derive(Debug)]
pub(crate) struct RemovalInFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for RemovalInFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl WorkRoot {
    /// Opens `path` as a private work root, creating what is missing (mode 0700), or refuses
    /// it with [`Error::UnsafeWorkRoot`] naming the offending path (see the module docs for
    /// the rule). I/O failures other than a refusal are [`Error::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let abs = std::path::absolute(path)
            .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
        let fd = walk(&abs)?;
        Ok(Self {
            path: abs,
            fd: Arc::new(fd),
            removals: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// The default root for `backend`: `$XDG_RUNTIME_DIR/crownest/<backend>` when that
    /// runtime dir is set (a private per-user tmpfs), else `/dev/shm/crownest-<euid>/<backend>`
    /// (tmpfs) when `/dev/shm` exists, else `<temp dir>/crownest-<euid>/<backend>`. The
    /// per-user directory is checked like the root: if another user created it first, the
    /// open is refused (naming it), never used.
    pub fn default_path(backend: &str) -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
            && dir.is_absolute()
            && dir.is_dir()
        {
            return dir.join("crownest").join(backend);
        }
        let user = format!("crownest-{}", rustix::process::geteuid().as_raw());
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(user).join(backend)
    }

    /// The absolute path the root was opened at (for messages; use [`WorkRoot::proc_path`]
    /// or [`WorkRoot::fd`] to reach it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory descriptor (opened `O_RDONLY | O_DIRECTORY`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `/proc/self/fd/<n>`: a path that names exactly the opened root in this process,
    /// whatever happens to its path afterwards. Valid only in this process (not in a
    /// spawned command).
    pub fn proc_path(&self) -> PathBuf {
        proc_fd_path(&self.fd)
    }

    /// How many deletions of this root's directories (a sandbox removed by
    /// [`SandboxDir::remove`](super::SandboxDir::remove) past its wait, a prepared tree
    /// dropped unused) are still running in the background.
    pub fn removals_in_flight(&self) -> usize {
        *self.removals.borrow()
    }

    /// Waits until no deletion of this root's directories runs in the background: what a
    /// backend's `shutdown` waits for, so a host process that exits after it leaves no
    /// tombstone behind (a crash still can; the sweep deletes those).
    pub async fn removals_settled(&self) {
        let mut done = self.removals.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = done.wait_for(|n| *n == 0).await;
    }

    /// Counts a background deletion until the returned guard is dropped.
    pub(crate) fn removal_started(&self) -> RemovalInFlight {
        self.removals.send_modify(|n| *n += 1);
        RemovalInFlight(self.removals.clone())
    }
}

/// `/proc/self/fd/<n>` of an open descriptor.
pub(crate) fn proc_fd_path(fd: &impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

fn unsafe_root(path: &Path, reason: impl Into<String>) -> Error {
    Error::UnsafeWorkRoot {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Walks `abs` from `/` as the module docs say and returns the root opened
/// `O_RDONLY | O_DIRECTORY`.
fn walk(abs: &Path) -> Result<OwnedFd> {
    let euid = rustix::process::geteuid().as_raw();
    let io_err = |what: &Path, e: Errno| Error::io(format!("opening {}", what.display()), e.into());
    let path_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open("/", path_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| io_err(Path::new("/"), e))?;
    // `stack` holds the opened directories from `/` down (for `..`), `shown` their path.
    let mut stack: Vec<OwnedFd> = vec![root_fd];
    let mut shown = PathBuf::from("/");
    let mut pending: VecDeque<OsString> = components(abs);
    let mut links = 0usize;
    while let Some(comp) = pending.pop_front() {
        if comp == ".." {
            if stack.len() > 1 {
                stack.pop();
                shown.pop();
            }
            continue;
        }
        let last = pending.is_empty();
        let parent = stack.last().ok_or_else(|| io_err(&shown, Errno::NOENT))?;
        let here = shown.join(&comp);
        let fd = match rustix::fs::openat(parent, comp.as_os_str(), path_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(parent, comp.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(Error::io(format!("creating {}", here.display()), e.into()));
                    }
                }
                rustix::fs::openat(parent, comp.as_os_str(), path_flags, Mode::empty())
                    .map_err(|e| io_err(&here, e))?
            }
            Err(e) => return Err(io_err(&here, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&here, e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Symlink {
            if last {
                return Err(unsafe_root(&here, "the root is a symlink"));
            }
            if !trusted_owner(st.st_uid) {
                return Err(unsafe_root(
                    &here,
                    format!(
                        "a symlink on the way to the root is owned by uid {}",
                        st.st_uid
                    ),
                ));
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io_err(&here, Errno::LOOP));
            }
            let target =
                rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| io_err(&here, e))?;
            let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
            if target.is_absolute() {
                stack.truncate(1);
                shown = PathBuf::from("/");
            }
            for c in components(&target).into_iter().rev() {
                pending.push_front(c);
            }
            continue;
        }
        if kind != FileType::Directory {
            return Err(unsafe_root(&here, "not a directory"));
        }
        let mode = st.st_mode & 0o7777;
        if last {
            if st.st_uid != euid {
                return Err(unsafe_root(
                    &here,
                    format!(
                        "owned by uid {}, not by this process's user (uid {euid}); \
                         another user may have created it",
                        st.st_uid
                    ),
                ));
            }
            if mode & 0o022 != 0 {
                return Err(unsafe_root(
                    &here,
                    format!("writable by group or others (mode {mode:04o})"),
                ));
            }
            let dir = rustix::fs::openat(
                &fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(&here, e))?;
            return Ok(dir);
        }
        if !trusted_owner(st.st_uid) {
            return Err(unsafe_root(
                &here,
                format!(
                    "a directory on the way to the root is owned by uid {}",
                    st.st_uid
                ),
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(unsafe_root(
                &here,
                format!(
                    "a directory on the way to the root is writable by group or others \
                     and not sticky (mode {mode:04o})"
                ),
            ));
        }
        stack.push(fd);
        shown = here;
    }
    // `abs` was `/` itself (or resolved to it): never a private root.
    Err(unsafe_root(&shown, "not owned by this process's user"))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn creates_a_private_root_and_reopens_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/root");
        let root = WorkRoot::open(&path).unwrap();
        for p in [tmp.path().join("a"), tmp.path().join("a/b"), path.clone()] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        assert_eq!(root.path(), path);
        assert!(root.proc_path().join(".").is_dir());
        WorkRoot::open(&path).unwrap();
    }

    #[test]
    fn refuses_a_symlinked_or_open_root() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = WorkRoot::open(&link).unwrap_err();
        assert!(matches!(e, Error::UnsafeWorkRoot { .. }), "{e}");
        assert!(e.to_string().contains("link"), "{e}");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = WorkRoot::open(&open).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");

        // Below a world-writable, non-sticky directory: refused too.
        let e = WorkRoot::open(open.join("root")).unwrap_err();
        assert!(e.to_string().contains("not sticky"), "{e}");
        assert!(!open.join("root").exists());

        // A trusted symlink on the way is followed.
        let via = tmp.path().join("via");
        std::os::unix::fs::symlink(&target, &via).unwrap();
        let root = WorkRoot::open(via.join("inner")).unwrap();
        assert!(target.join("inner").is_dir());
        drop(root);
    }
}
