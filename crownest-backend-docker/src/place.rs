//! The workspace as a private host directory bind-mounted at `/workspace`, when the engine
//! is this host's own and this process is root: the checked tree is *moved* into it on the
//! host (no copy, no program in the container, no Docker volume).
//!
//! Why: every program a fresh container starts is read through its own new
//! fuse-overlayfs mount, so the in-container hand-over (`launcher.rs`, step 0: `dd` and
//! `tar` as the sandbox user) cost a tiny run ~14 ms; and an anonymous volume costs the
//! daemon a metadata commit (an `fsync`) at create and another at removal, both on the
//! run's path. A bind of a directory this process made costs neither.
//!
//! How it stays safe:
//! * the directory is a marked core [`SandboxDir`] of the backend's **private work root**
//!   (`<root>/<run>-<random>/workspace`; the root is owned by this process's user, mode
//!   0700, never a symlink), so no other local user can reach it; its marker (backend,
//!   run, engine, owner process, keep deadline) lets the core sweep remove it after a crash
//!   under the one orphan rule, like the container's labels;
//! * the daemon resolves the bind's path itself, so it is given the work root's canonical
//!   path (no symlink in it), checked to name the directory this process has open, and
//!   binds are used only when every ancestor of it is root's and not writable by anyone
//!   else (or sticky, like `/tmp`, where nobody else can rename our entries): nobody else
//!   can swap a component for a link between our check and the daemon's mount
//!   ([`bind_base`], [`private_ancestors`]);
//! * the tree moved in is the one the core extractor checked, in a directory of the same
//!   root that only this process writes; every entry is chowned to the sandbox user
//!   without following links, and setuid, setgid and sticky bits are cleared, *before*
//!   the move, so nothing in the container-visible directory is ever touched by path;
//!   the moves are `renameat` between two directory descriptors, never replacing an entry;
//! * the container's only process is the launcher, waiting for its frame, until the
//!   command starts: nothing inside races the move, and the command never sees a partial
//!   tree;
//! * the directory is deleted (through a tombstone) once the container is stopped or gone;
//!   its bind is the container's only host path.
//!
//! The result is what the launcher's `tar -x -p` makes: every entry owned by the sandbox
//! user, permission bits without setuid/setgid/sticky, mtimes as extracted, hardlinks as
//! links (test `the_workspace_written_from_the_host_is_the_one_the_launcher_unpacks`).
//! Where binds cannot be used (not root, a remote engine, a work root with an unsafe
//! ancestor, a daemon that does not see this host's paths), the workspace is an anonymous
//! Docker volume and the launcher unpacks the tree.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crownest_core::hostdir::{Marker, SandboxDir, WorkRoot};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};

use crate::upload::WorkspaceIndex;

/// The subdirectory of a bound sandbox directory that is mounted at `/workspace`.
pub(crate) const BOUND: &str = "workspace";

/// True when this process can bind workspaces from the host: it is root and talks to the
/// local engine over its unix socket (a remote or rootless engine cannot see this host's
/// directories as ours, and a non-root user cannot hand them to the sandbox user).
pub(crate) fn possible(host: Option<&str>) -> bool {
    let local = match host {
        None => std::env::var("DOCKER_HOST").map_or(true, |h| {
            h.is_empty() || h == "unix:///var/run/docker.sock" || h == "unix:///run/docker.sock"
        }),
        Some(h) => h == "unix:///var/run/docker.sock" || h == "unix:///run/docker.sock",
    };
    local && rustix::process::geteuid().is_root()
}

/// True when no one but root can change what the path of `root` resolves to: every
/// ancestor of its canonical path is a directory owned by root, and one that others may
/// write is sticky (they cannot rename or remove root's entries in it).
pub(crate) fn private_ancestors(root: &Path) -> bool {
    let Ok(canonical) = fs::canonicalize(root) else {
        return false;
    };
    canonical.ancestors().skip(1).all(|dir| {
        fs::symlink_metadata(dir).is_ok_and(|m| {
            m.file_type().is_dir()
                && m.uid() == 0
                && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0)
        })
    })
}

/// Creates the bound directory of sandbox `sandbox` in `root`: a marked sandbox
/// directory whose `workspace` (mode 0700) belongs to `uid:gid`. The marker records the
/// sandbox id in its state.
pub(crate) fn create_bound(
    root: &WorkRoot,
    mut marker: Marker,
    sandbox: &str,
    (uid, gid): (u64, u64),
) -> crownest_core::Result<SandboxDir> {
    marker.state = serde_json::json!({ "sandbox": sandbox });
    SandboxDir::create(root, &marker, |d| {
        d.mkdir(BOUND, 0o700)?;
        rustix::fs::chownat(
            d.fd(),
            BOUND,
            Some(rustix::fs::Uid::from_raw(to_id(uid)?)),
            Some(rustix::fs::Gid::from_raw(to_id(gid)?)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    })
}

/// The path of `root` to give the daemon for binds, when binds are safe: its canonical
/// path (no symlink left for anyone to swap), every ancestor of which only root can change
/// ([`private_ancestors`]), and which names the very directory `root` has open.
pub(crate) fn bind_base(root: &WorkRoot) -> Option<PathBuf> {
    let canonical = fs::canonicalize(root.path()).ok()?;
    if !private_ancestors(&canonical) {
        return None;
    }
    let named = fs::symlink_metadata(&canonical).ok()?;
    let open = rustix::fs::fstat(root.fd()).ok()?;
    (named.dev() == open.st_dev && named.ino() == open.st_ino).then_some(canonical)
}

/// The host path the daemon binds at `/workspace`: `dir`'s workspace under `base`, the
/// canonical path of its root ([`bind_base`]).
pub(crate) fn bound_path(base: &Path, dir: &SandboxDir) -> String {
    base.join(dir.name())
        .join(BOUND)
        .to_string_lossy()
        .into_owned()
}

/// Hands the checked tree `src` (a directory of the same work root that only this process
/// writes) to the sandbox user and moves its entries into `dir`'s (empty) workspace;
/// returns the index of what was placed.
pub(crate) fn move_tree(
    src: &Path,
    dir: &SandboxDir,
    (uid, gid): (u64, u64),
) -> io::Result<WorkspaceIndex> {
    let owner = (
        Some(rustix::fs::Uid::from_raw(to_id(uid)?)),
        Some(rustix::fs::Gid::from_raw(to_id(gid)?)),
    );
    let mut index = WorkspaceIndex::default();
    index.dirs.insert(String::new());
    // 1. In the private tree: owner and permission bits of every entry (a chown changes
    //    no mtime, so the extracted times stay).
    crate::upload::walk_staging(src, |e| {
        let ft = e.meta.file_type();
        rustix::fs::chownat(
            rustix::fs::CWD,
            &e.path,
            owner.0,
            owner.1,
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if ft.is_symlink() {
            index.files.insert(e.rel, None);
            return Ok(());
        }
        // Sticky, and setuid/setgid where a chown left them, are cleared (by path: the
        // private tree is this process's alone, and the entry is no link).
        if e.meta.mode() & 0o7000 != 0 {
            rustix::fs::chmod(&e.path, mode_of(&e.meta))?;
        }
        if ft.is_dir() {
            index.dirs.insert(e.rel);
        } else if ft.is_file() {
            index.files.insert(e.rel, Some(e.meta.mode() & 0o777));
        }
        // Anything else cannot come out of the core extractor (it is moved as it is).
        Ok(())
    })?;
    // 2. Into the workspace: one `renameat` per top-level entry, never replacing one.
    let from = rustix::fs::open(
        src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let to = dir.open_dir(BOUND)?;
    let root_meta = fs::symlink_metadata(src)?;
    for entry in fs::read_dir(src)? {
        let name = entry?.file_name();
        rustix::fs::renameat_with(&from, &name, &to, &name, RenameFlags::NOREPLACE)?;
    }
    // 3. The workspace itself: the tree root's permission bits and times (the moves
    //    changed its mtime).
    rustix::fs::fchmod(&to, mode_of(&root_meta))?;
    rustix::fs::futimens(&to, &times(&root_meta))?;
    Ok(index)
}

fn to_id(id: u64) -> io::Result<u32> {
    u32::try_from(id).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "id out of range"))
}

/// The permission bits the launcher's `tar -x -p` would keep (never setuid, setgid or
/// sticky).
fn mode_of(meta: &fs::Metadata) -> Mode {
    Mode::from_raw_mode(meta.mode() & 0o777)
}

fn times(meta: &fs::Metadata) -> Timestamps {
    let mtime = Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec(),
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use crownest_core::hostdir::WorkRoot;

    use super::{bind_base, private_ancestors};

    #[test]
    fn binds_need_ancestors_only_root_can_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("work");
        std::fs::create_dir(&root).unwrap();
        // Under a root-owned 0700 directory in the sticky /tmp: only root can change it
        // (when root runs this; another user's directories never qualify).
        assert_eq!(
            private_ancestors(&root),
            rustix::process::geteuid().is_root()
        );
        // A parent that others may write, without the sticky bit: refused.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!private_ancestors(&root));
        // Sticky: nobody else can rename root's entries in it.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(
            private_ancestors(&root),
            rustix::process::geteuid().is_root()
        );
        // A parent owned by another user (who could swap `work` for a link): refused.
        if rustix::process::geteuid().is_root() {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            rustix::fs::chown(
                tmp.path(),
                Some(rustix::fs::Uid::from_raw(65534)),
                Some(rustix::fs::Gid::from_raw(65534)),
            )
            .unwrap();
            assert!(!private_ancestors(&root));
        }
        // A path that does not resolve: refused.
        assert!(!private_ancestors(&tmp.path().join("missing")));
    }

    #[test]
    fn the_daemon_gets_the_canonical_path_of_the_open_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        // Opened through a link in its path: the daemon must get the path without it (a
        // link is what someone could swap).
        let root = WorkRoot::open(tmp.path().join("link").join("work")).unwrap();
        let base = bind_base(&root);
        if rustix::process::geteuid().is_root() {
            let expected = std::fs::canonicalize(tmp.path().join("real").join("work")).unwrap();
            assert_eq!(base.as_deref(), Some(expected.as_path()));
            // The path now names another directory than the open one: no binds.
            std::fs::rename(tmp.path().join("real"), tmp.path().join("moved")).unwrap();
            std::fs::create_dir_all(tmp.path().join("real").join("work")).unwrap();
            std::fs::set_permissions(
                tmp.path().join("real").join("work"),
                std::fs::Permissions::from_mode(0o700),
            )
            .unwrap();
            assert_eq!(bind_base(&root), None);
        } else {
            assert_eq!(base, None);
        }
    }
}
