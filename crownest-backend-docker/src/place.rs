//! The workspace written straight into the container's volume from the host, when the
//! engine is this host's own and this process may write its volumes (root, the local
//! socket, the `local` volume driver): no program runs in the container for it.
//!
//! Why: every program a fresh container starts is read through its own new
//! fuse-overlayfs mount, so the in-container hand-over (`launcher.rs`, step 0: `dd` and
//! `tar` as the sandbox user) cost a tiny run ~14 ms, most of a `docker run`'s whole
//! `start`-to-exit; copying 50 files on the host takes about a millisecond.
//!
//! How it stays safe:
//! * the volume is the anonymous one created with this sandbox's container (found by the
//!   sandbox label Docker put on it, `local` driver, its `Mountpoint` a real directory,
//!   opened with `O_NOFOLLOW`) and nothing has written it but Docker's copy of the image's
//!   empty `/workspace`; the container's only process is the launcher, waiting for its
//!   frame, so nothing inside races the copy; the volumes directory is root's alone;
//! * every entry is created relative to a directory descriptor this copy made itself
//!   (`mkdirat`, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`, `symlinkat`, `linkat`), so no
//!   path ever resolves through a link, and an entry that already exists fails the copy;
//! * the source is the tree the core extractor checked, which only this process writes;
//! * the result is what the launcher's `tar -x -p` made: every entry owned by the sandbox
//!   user, modes without setuid/setgid/sticky, mtimes kept (directories' last), hardlinks
//!   as links; the index is the one the walk of `upload.rs` builds.
//!
//! A volume that cannot be found or opened falls back to the launcher (nothing was
//! written); a copy that fails half-way fails the materialize (the sandbox is destroyed,
//! and the command never runs).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bollard::Docker;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use crate::container::LABEL_SANDBOX;
use crate::upload::WorkspaceIndex;

/// True when this process can place workspaces from the host: it is root and talks to the
/// local engine over its unix socket (a remote or rootless engine's volumes are not ours
/// to write, and a non-root user cannot).
pub(crate) fn possible(host: Option<&str>) -> bool {
    let local = match host {
        None => std::env::var("DOCKER_HOST").map_or(true, |h| {
            h.is_empty() || h == "unix:///var/run/docker.sock" || h == "unix:///run/docker.sock"
        }),
        Some(h) => h == "unix:///var/run/docker.sock" || h == "unix:///run/docker.sock",
    };
    local && rustix::process::geteuid().is_root()
}

/// The host directory of `sandbox`'s workspace volume, opened (`None`: not usable here).
pub(crate) async fn volume_dir(docker: &Docker, sandbox: &str) -> Option<(PathBuf, OwnedFd)> {
    let label = format!("{LABEL_SANDBOX}={sandbox}");
    let mut filters = HashMap::new();
    filters.insert("label", vec![label.as_str()]);
    let opts = bollard::query_parameters::ListVolumesOptionsBuilder::new()
        .filters(&filters)
        .build();
    let volumes = docker.list_volumes(Some(opts)).await.ok()?.volumes?;
    let [volume] = volumes.as_slice() else {
        return None;
    };
    if volume.driver != "local" || volume.mountpoint.is_empty() {
        return None;
    }
    let path = PathBuf::from(&volume.mountpoint);
    let fd = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some((path, fd))
}

/// Copies the tree `src` into the directory `dst` (a fresh, empty workspace volume),
/// every entry owned by `uid:gid`; returns the index of what was placed.
pub(crate) fn copy_tree(
    src: &Path,
    dst: &OwnedFd,
    (uid, gid): (u64, u64),
) -> io::Result<WorkspaceIndex> {
    let owner = (
        Some(rustix::fs::Uid::from_raw(to_id(uid)?)),
        Some(rustix::fs::Gid::from_raw(to_id(gid)?)),
    );
    let mut index = WorkspaceIndex::default();
    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    // Directories get their modes and times once their children are in (creating a child
    // changes its parent's mtime), deepest first.
    // Paths, not descriptors: a tree of 20 000 directories must not hold 20 000 of them.
    let mut finish: Vec<(String, fs::Metadata)> = Vec::new();
    let root_meta = fs::symlink_metadata(src)?;
    index.dirs.insert(String::new());
    rustix::fs::fchown(dst, owner.0, owner.1)?;
    // The directory being filled, reopened only when the walk moves to the next one (the
    // entries of a directory come one after another).
    let mut current: Option<(String, OwnedFd)> = None;
    crate::upload::walk_staging(src, |e| {
        let fd = match current.take() {
            Some((rel, fd)) if rel == e.parent => (rel, fd),
            _ => (e.parent.clone(), open_placed_dir(dst, &e.parent)?),
        };
        let (name, meta) = (e.name.as_str(), &e.meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            rustix::fs::mkdirat(&fd.1, name, Mode::from_raw_mode(0o700))?;
            rustix::fs::chownat(&fd.1, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
            index.dirs.insert(e.rel.clone());
            finish.push((e.rel, e.meta));
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.path)?;
            rustix::fs::symlinkat(&target, &fd.1, name)?;
            rustix::fs::chownat(&fd.1, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
            rustix::fs::utimensat(&fd.1, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)?;
            index.files.insert(e.rel, None);
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = seen.get(&key)
            {
                // Relative to the root this copy made: every component is a directory it
                // created, so nothing resolves through a link.
                rustix::fs::linkat(dst, first.as_str(), &fd.1, name, AtFlags::empty())?;
            } else {
                if meta.nlink() > 1 {
                    seen.insert(key, e.rel.clone());
                }
                let out = rustix::fs::openat(
                    &fd.1,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut from = fs::File::open(&e.path)?;
                let mut to = fs::File::from(out);
                io::copy(&mut io::Read::take(&mut from, meta.len()), &mut to)?;
                rustix::fs::fchown(&to, owner.0, owner.1)?;
                rustix::fs::fchmod(&to, mode_of(meta))?;
                rustix::fs::futimens(&to, &times(meta))?;
            }
            index.files.insert(e.rel.clone(), Some(meta.mode() & 0o777));
        }
        // Anything else cannot come out of the core extractor: not placed (as the tar of
        // `upload.rs` does not carry it).
        current = Some(fd);
        Ok(())
    })?;
    for (rel, meta) in finish.iter().rev() {
        let fd = open_placed_dir(dst, rel)?;
        rustix::fs::fchmod(&fd, mode_of(meta))?;
        rustix::fs::futimens(&fd, &times(meta))?;
    }
    rustix::fs::fchmod(dst, mode_of(&root_meta))?;
    rustix::fs::futimens(dst, &times(&root_meta))?;
    Ok(index)
}

/// A directory this copy made, by its path under the root: every component is a directory
/// the copy created (a symlink it made is never a component: no name is both), nothing
/// else writes the volume, and the last component is opened without following a link.
fn open_placed_dir(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() { "." } else { rel };
    Ok(rustix::fs::openat(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
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
    // Whole seconds, as a tar header carries them (what the launcher's `tar` set).
    let mtime = Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}
