//! A directory handle that cannot leave its root and never follows a symlink.
//!
//! Parent directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` where the kernel has it (Linux ≥ 5.6), and otherwise one
//! component at a time with `openat(O_DIRECTORY | O_NOFOLLOW)`. Every object is then created
//! relative to its parent's fd by its final name only (`O_CREAT | O_EXCL | O_NOFOLLOW`,
//! `mkdirat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`), so neither a symlink nor
//! `..` can redirect a write, even if the lexical policy had a hole.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How many parent directory fds are kept open (archives are mostly grouped by directory).
const CACHE: usize = 16;

/// A confined, no-follow view of one directory tree, used by the extractor's writer.
pub(super) struct ConfinedDir {
    root: OwnedFd,
    openat2: bool,
    /// The process umask, to know when a `fchmod` is needed for exact modes.
    umask: u32,
    /// Recently used directories, most recent last.
    cache: Vec<(Box<str>, OwnedFd)>,
}

impl ConfinedDir {
    /// Wraps an open directory fd (which must be a directory this process created).
    pub(super) fn new(root: OwnedFd) -> Self {
        let openat2 = match rustix::fs::openat2(&root, ".", DIR_FLAGS, Mode::empty(), resolve()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "openat2 unavailable; walking paths one component at a time");
                false
            }
        };
        Self {
            root,
            openat2,
            umask: current_umask(),
            cache: Vec::with_capacity(CACHE),
        }
    }

    /// Another handle on the same root (a duplicated fd, an empty cache), for another
    /// writer thread.
    pub(super) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            root: self.root.try_clone()?,
            openat2: self.openat2,
            umask: self.umask,
            cache: Vec::with_capacity(CACHE),
        })
    }

    /// Forces the component-by-component fallback (for tests).
    #[cfg(test)]
    fn without_openat2(mut self) -> Self {
        self.openat2 = false;
        self
    }

    /// The fd of the directory at `rel` (normalized, `""` = root), opened no-follow.
    fn dir(&mut self, rel: &str) -> io::Result<BorrowedFd<'_>> {
        if rel.is_empty() {
            return Ok(self.root.as_fd());
        }
        if let Some(i) = self.cache.iter().rposition(|(p, _)| **p == *rel) {
            return Ok(self.cache[i].1.as_fd());
        }
        let fd = self.open_dir(rel)?;
        Ok(self.remember(rel, fd))
    }

    fn remember(&mut self, rel: &str, fd: OwnedFd) -> BorrowedFd<'_> {
        if self.cache.len() >= CACHE {
            self.cache.remove(0);
        }
        self.cache.push((rel.into(), fd));
        let last = self.cache.len() - 1;
        self.cache[last].1.as_fd()
    }

    /// Opens the directory at `rel` (non-empty) without the cache.
    fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        if self.openat2 {
            loop {
                match rustix::fs::openat2(&self.root, rel, DIR_FLAGS, Mode::empty(), resolve()) {
                    // EAGAIN: a concurrent rename somewhere on the system; retry.
                    Err(rustix::io::Errno::AGAIN) => continue,
                    r => return r.map_err(io::Error::from),
                }
            }
        }
        let mut fd: Option<OwnedFd> = None;
        for c in rel.split('/') {
            let parent = fd.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            fd = Some(rustix::fs::openat(parent, c, DIR_FLAGS, Mode::empty())?);
        }
        fd.ok_or_else(|| io::Error::other("empty path"))
    }

    /// Creates a directory (mode at least `0o700`) and keeps it open as a likely parent.
    pub(super) fn mkdir(&mut self, rel: &str, mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::mkdirat(self.dir(parent)?, name, Mode::from_raw_mode(mode))?;
        let fd = rustix::fs::openat(self.dir(parent)?, name, DIR_FLAGS, Mode::empty())?;
        if mode & self.umask != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        }
        self.remember(rel, fd);
        Ok(())
    }

    /// Sets the mode of an existing directory (`""` = the root).
    pub(super) fn chmod_dir(&mut self, rel: &str, mode: u32) -> io::Result<()> {
        let fd = self.dir(rel)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Creates a new regular file (`O_EXCL | O_NOFOLLOW`) with exactly `mode`.
    pub(super) fn create_file(&mut self, rel: &str, mode: u32) -> io::Result<File> {
        let (parent, name) = split(rel);
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = rustix::fs::openat(self.dir(parent)?, name, flags, Mode::from_raw_mode(mode))?;
        if mode & self.umask != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        }
        Ok(File::from(fd))
    }

    /// Removes a regular file or symlink (never a directory).
    pub(super) fn unlink(&mut self, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::unlinkat(self.dir(parent)?, name, AtFlags::empty())?;
        Ok(())
    }

    /// Creates a symlink; its target is stored, never followed here.
    pub(super) fn symlink(&mut self, rel: &str, target: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::symlinkat(target, self.dir(parent)?, name)?;
        Ok(())
    }

    /// Creates a hardlink `rel` to the existing regular file `target` (both relative to the
    /// root). `linkat` without `AT_SYMLINK_FOLLOW` never dereferences the source.
    pub(super) fn hardlink(&mut self, target: &str, rel: &str) -> io::Result<()> {
        let (tparent, tname) = split(target);
        let tdir = if tparent.is_empty() {
            None
        } else {
            Some(self.open_dir(tparent)?)
        };
        let (parent, name) = split(rel);
        let root = self.root.try_clone()?;
        let tfd = tdir.as_ref().map_or(root.as_fd(), |f| f.as_fd());
        rustix::fs::linkat(tfd, tname, self.dir(parent)?, name, AtFlags::empty())?;
        Ok(())
    }
}

/// Sets a file's modification time (seconds since the epoch), leaving its access time.
pub(super) fn set_mtime(file: &File, mtime: i64) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    };
    rustix::fs::futimens(file, &times)?;
    Ok(())
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// The umask, read without changing it (`/proc/self/status`); when it cannot be read,
/// every mode is applied explicitly.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, DIR_FLAGS, Mode::empty()).unwrap()
    }

    fn exercise(mut d: ConfinedDir, root: &std::path::Path) {
        d.mkdir("a", 0o755).unwrap();
        d.mkdir("a/b", 0o700).unwrap();
        let mut f = d.create_file("a/b/f", 0o754).unwrap();
        f.write_all(b"hi").unwrap();
        set_mtime(&f, 1_000_000).unwrap();
        drop(f);
        d.hardlink("a/b/f", "a/h").unwrap();
        d.symlink("a/l", "b").unwrap();
        assert!(d.create_file("a/b/f", 0o644).is_err(), "O_EXCL");
        // A symlink in the middle of a path is refused by the kernel, not followed.
        assert!(d.create_file("a/l/x", 0o644).is_err());
        assert!(!root.join("a/b/x").exists());
        let md = std::fs::metadata(root.join("a/b/f")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o754);
        assert_eq!(std::fs::read(root.join("a/h")).unwrap(), b"hi");
        d.unlink("a/h").unwrap();
        d.chmod_dir("a", 0o711).unwrap();
    }

    #[test]
    fn writes_stay_confined_with_openat2() {
        let t = tempfile::tempdir().unwrap();
        exercise(ConfinedDir::new(open(t.path())), t.path());
    }

    #[test]
    fn writes_stay_confined_without_openat2() {
        let t = tempfile::tempdir().unwrap();
        exercise(ConfinedDir::new(open(t.path())).without_openat2(), t.path());
    }
}
