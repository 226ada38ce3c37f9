//! Artifacts out of a stopped container, read as if from a local workspace.
//!
//! `GET /containers/{id}/archive` resolves symlinks in the *parent* directories of the
//! path it is given (inside the container's root), so asking it for `out/file` where `out`
//! is a symlink would read outside `/workspace`. Instead:
//!
//! 1. each parent component is `stat`ed on its own (`HEAD .../archive`, which never
//!    follows the last component) and mirrored into a private host directory: a real
//!    directory becomes a directory, a symlink becomes the same symlink (never followed
//!    here; its raw target comes from downloading the link itself, because the stat
//!    answer carries a target already resolved by Docker), anything else an empty
//!    placeholder — and the walk stops at the first non-directory;
//! 2. only when every parent is a real directory, the path itself is downloaded (its last
//!    component is not followed by Docker either) and unpacked into the mirror by a strict
//!    unpacker: no absolute or `..` names, nothing written through a symlink, no device
//!    nodes (special files become fifos), at most `max_bytes` of content and `max_entries`
//!    entries;
//! 3. the core collector [`crownest_core::artifact::collect_from_dir`] then judges the
//!    mirror exactly as it judges a host workspace (no-follow, regular files only, caps).
//!
//! The container is stopped when this runs, so nothing changes between the steps.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path};

use bollard::Docker;
use bollard::query_parameters::{
    ContainerArchiveInfoOptionsBuilder, DownloadFromContainerOptionsBuilder,
};
use bytes::Bytes;
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact, collect_from_dir};
use crownest_core::event::ArtifactErrorReason;
use futures::StreamExt as _;
use tokio::sync::mpsc;

use crate::container::WORKSPACE;
use crate::error::is_not_found;

/// Go's `os.FileMode` bits as Docker reports them in a path stat.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

fn not_found(message: impl Into<String>) -> ArtifactFailure {
    ArtifactFailure::new(ArtifactErrorReason::NotFound, message)
}

/// Collects `path` from `container` (stopped) through a private mirror under `work_dir`.
pub(crate) async fn collect(
    docker: &Docker,
    container: &str,
    work_dir: &Path,
    sandbox: &str,
    path: &str,
    max_bytes: u64,
    max_entries: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let norm = crownest_core::WorkspacePath::parse_entry(path).map_err(|e| {
        ArtifactFailure::new(
            ArtifactErrorReason::InvalidPath,
            format!("invalid artifact path {path:?}: {e}"),
        )
    })?;
    let comps: Vec<&str> = norm.components().collect();
    let mirror = tempfile::Builder::new()
        .prefix(&format!("{sandbox}-artifact-"))
        .tempdir_in(work_dir)
        .map_err(|e| not_found(format!("host staging {}: {e}", work_dir.display())))?;
    let root = mirror.path().join("ws");
    fs::create_dir(&root).map_err(|e| not_found(format!("host staging: {e}")))?;

    let mut all_dirs = true;
    let mut local = root.clone();
    let mut remote = WORKSPACE.to_owned();
    if let Some((_, parents)) = comps.split_last() {
        for c in parents {
            remote = format!("{remote}/{c}");
            local = local.join(c);
            let opts = ContainerArchiveInfoOptionsBuilder::new()
                .path(&remote)
                .build();
            let stat = match docker
                .get_container_archive_info(container, Some(opts))
                .await
            {
                Ok(s) => s,
                Err(e) if is_not_found(&e) => {
                    all_dirs = false;
                    break;
                }
                Err(e) => return Err(not_found(format!("{path:?}: stat of {remote} failed: {e}"))),
            };
            if stat.file_mode & GO_MODE_DIR != 0 {
                fs::create_dir(&local).map_err(|e| not_found(format!("host staging: {e}")))?;
            } else if stat.file_mode & GO_MODE_SYMLINK != 0 {
                // The stat's `linkTarget` is already resolved by Docker; the raw target
                // comes with the link itself (the last component of a download is not
                // followed), so the collector judges the link as it is.
                let parent = local.parent().unwrap_or(&root).to_path_buf();
                download_into(
                    docker,
                    container,
                    &remote,
                    &parent,
                    max_bytes,
                    max_entries,
                    path,
                )
                .await?;
                all_dirs = false;
                break;
            } else {
                fs::write(&local, b"").map_err(|e| not_found(format!("host staging: {e}")))?;
                all_dirs = false;
                break;
            }
        }
    }
    if all_dirs {
        remote = format!("{WORKSPACE}/{norm}");
        download_into(
            docker,
            container,
            &remote,
            &local,
            max_bytes,
            max_entries,
            path,
        )
        .await?;
    }
    let norm_owned = norm.clone();
    tokio::task::spawn_blocking(move || {
        let r = collect_from_dir(&root, norm_owned.as_str(), max_bytes);
        // File artifacts hold an open fd and directory tars are spooled to an anonymous
        // temp file, so the mirror can go now.
        drop(mirror);
        r
    })
    .await
    .map_err(|e| not_found(format!("{path:?}: collector task failed: {e}")))?
}

/// Downloads `remote` and unpacks it into `parent` (the local directory of its parent).
async fn download_into(
    docker: &Docker,
    container: &str,
    remote: &str,
    local_parent: &Path,
    max_bytes: u64,
    max_entries: u64,
    path: &str,
) -> Result<(), ArtifactFailure> {
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(remote)
        .build();
    let mut stream = Box::pin(docker.download_from_container(container, Some(opts)));
    // Peek the first chunk: a 404 (nothing there) arrives as the first item.
    let first = match stream.next().await {
        None => return Ok(()),
        Some(Err(e)) if is_not_found(&e) => return Ok(()),
        Some(Err(e)) => return Err(not_found(format!("{path:?}: download failed: {e}"))),
        Some(Ok(b)) => b,
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let forward = async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| io::Error::other(format!("download failed: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    };
    let parent = local_parent.to_path_buf();
    let path_owned = path.to_owned();
    let unpack = tokio::task::spawn_blocking(move || {
        unpack_strict(
            ChannelReader::new(rx),
            &parent,
            max_bytes,
            max_entries,
            &path_owned,
        )
    });
    let ((), unpacked) = tokio::join!(forward, unpack);
    unpacked.map_err(|e| not_found(format!("{path:?}: unpack task failed: {e}")))?
}

/// A blocking `Read` over a channel of chunks.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.cur = b,
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

fn too_large(path: &str, what: String) -> ArtifactFailure {
    ArtifactFailure::new(ArtifactErrorReason::TooLarge, format!("{path:?}: {what}"))
}

/// True when every existing component of `rel` below `root` is a real directory.
fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Unpacks a tar from Docker into `dest` without ever trusting it.
pub(crate) fn unpack_strict(
    reader: impl Read,
    dest: &Path,
    max_bytes: u64,
    max_entries: u64,
    path: &str,
) -> Result<(), ArtifactFailure> {
    let io_err = |e: io::Error| {
        not_found(format!(
            "{path:?}: reading the container's archive failed: {e}"
        ))
    };
    let mut archive = tar::Archive::new(reader);
    let mut content: u64 = 0;
    let mut count: u64 = 0;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        count += 1;
        if count > max_entries {
            return Err(too_large(path, format!("more than {max_entries} entries")));
        }
        let name = entry.path().map_err(io_err)?.into_owned();
        if name
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(not_found(format!(
                "{path:?}: the container's archive has an unsafe name {name:?}"
            )));
        }
        if name.components().all(|c| matches!(c, Component::CurDir)) {
            continue;
        }
        if !parents_are_dirs(dest, &name) {
            continue;
        }
        let target = dest.join(&name);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        let made = match kind {
            tar::EntryType::Directory => match fs::create_dir(&target) {
                Ok(()) => fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                content = content.saturating_add(size);
                if content > max_bytes {
                    return Err(too_large(path, format!("more than {max_bytes} bytes")));
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err)?;
                io::copy(&mut (&mut entry).take(size), &mut file).map_err(io_err)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o400))
            }
            tar::EntryType::Symlink => match entry.link_name().map_err(io_err)? {
                Some(link) => std::os::unix::fs::symlink(link, &target),
                None => Ok(()),
            },
            tar::EntryType::Link => match entry.link_name().map_err(io_err)? {
                Some(link)
                    if link
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                        && parents_are_dirs(dest, &link) =>
                {
                    let src = dest.join(&link);
                    match fs::symlink_metadata(&src) {
                        Ok(m) if m.file_type().is_file() => fs::hard_link(&src, &target),
                        _ => Ok(()),
                    }
                }
                _ => Ok(()),
            },
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Never a device node on the host: a fifo stands for any special file, so
                // the collector reports it as `not_regular` like the original.
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(io::Error::from)
            }
            _ => Ok(()),
        };
        made.map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                b.append_link(&mut h, name, l).unwrap();
            } else {
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn never_writes_through_a_symlink_or_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (
                "d",
                tar::EntryType::Symlink,
                b"",
                Some(outside.path().to_str().unwrap()),
            ),
            ("d/evil", tar::EntryType::Regular, b"x", None),
            ("ok", tar::EntryType::Regular, b"fine", None),
        ]);
        unpack_strict(&t[..], dir.path(), 100, 100, "p").unwrap();
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written through the link"
        );
        assert_eq!(fs::read(dir.path().join("ok")).unwrap(), b"fine");
        assert!(
            fs::symlink_metadata(dir.path().join("d"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn caps_bytes_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[("big", tar::EntryType::Regular, &[0u8; 100], None)]);
        let err = unpack_strict(&t[..], dir.path(), 10, 100, "p").unwrap_err();
        assert_eq!(err.reason, ArtifactErrorReason::TooLarge);
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("a", tar::EntryType::Regular, b"", None),
            ("b", tar::EntryType::Regular, b"", None),
        ]);
        let err = unpack_strict(&t[..], dir.path(), 10, 1, "p").unwrap_err();
        assert_eq!(err.reason, ArtifactErrorReason::TooLarge);
    }

    #[test]
    fn refuses_parent_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = tar_of(&[("xx/escape", tar::EntryType::Regular, b"x", None)]);
        // Rewrite the name field to `../escape` (the tar crate refuses to write it).
        raw[..9].copy_from_slice(b"../escape");
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let err = unpack_strict(&raw[..], dir.path(), 100, 100, "p").unwrap_err();
        assert_eq!(err.reason, ArtifactErrorReason::NotFound);
        assert!(err.message.contains("unsafe name"), "{}", err.message);
    }
}
