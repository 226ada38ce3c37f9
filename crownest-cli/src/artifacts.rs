//! `crownest artifacts RUN --out DIR`: writes each artifact under DIR at its path.
//!
//! * A file artifact is written to `DIR/<path>`; a directory artifact (stored as a tar of
//!   its regular files and subdirectories) is unpacked into `DIR/<path>/`.
//! * Every write goes through directory file descriptors opened with `O_NOFOLLOW` from DIR
//!   down: a symlink anywhere below DIR (planted before or during the export) is never
//!   followed, it is an error. DIR itself may be a symlink (it is the caller's choice).
//! * Paths are checked lexically first: absolute paths and `..` components are refused.
//! * Each file is written to a temporary name, its sha256 checked against the record while
//!   writing, then renamed into place: a blob that does not match never appears under its
//!   name. A directory artifact's tar is re-hashed before it is unpacked.
//! * Existing regular files are replaced; anything else in the way is an error.
//! * With `--server`, each artifact's bytes are fetched from the server and checked the same
//!   way (a wrong digest never lands under its name).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path};

use anyhow::{Context as _, bail};
use crownest_core::WorkspacePath;
use crownest_core::run::ArtifactKind;
use crownest_core::store::BlobReader;
use crownest_core::{Artifact, Sha256Digest};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::cli::ArtifactsArgs;
use crate::connection::{Connection, Target};
use crate::exit::{Exit, usage};
use crate::inspect::run_id;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `crownest artifacts`.
pub(crate) async fn export(target: &Target, args: ArtifactsArgs) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    let record = conn.get(&id).await?;
    if !record.status.is_terminal() {
        return Err(usage(format!(
            "run {id} is {}: artifacts are collected when it ends",
            record.status
        )));
    }
    if record.artifacts.is_empty() {
        eprintln!("crownest: run {id} has no artifacts");
        return Ok(Exit::Success);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let root = rustix::fs::open(
        &args.out,
        DIR_FLAGS.difference(OFlags::NOFOLLOW),
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", args.out.display()))?;
    let mut failed = 0;
    for a in &record.artifacts {
        let root = root.try_clone().context("duplicating a directory handle")?;
        let artifact = a.clone();
        let result = match open_readers(&conn, a).await {
            Ok(readers) => {
                tokio::task::spawn_blocking(move || write_artifact(&root, &artifact, readers))
                    .await
                    .context("export task")?
            }
            Err(e) => Err(e),
        };
        let shown = args.out.join(&a.path);
        match result {
            Ok(()) => println!(
                "{}  {}  {} bytes  sha256 {}",
                shown.display(),
                a.artifact_id,
                a.size_bytes,
                a.sha256
            ),
            Err(e) => {
                failed += 1;
                eprintln!(
                    "crownest: artifact {}: {}",
                    a.path,
                    crate::exit::describe(&e)
                );
            }
        }
    }
    Ok(if failed == 0 {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// One reader of the blob for a file; two for a directory (hash, then unpack).
async fn open_readers(
    conn: &Connection,
    a: &Artifact,
) -> anyhow::Result<(BlobReader, Option<BlobReader>)> {
    let n = match a.kind {
        ArtifactKind::File => 1,
        ArtifactKind::Directory => 2,
    };
    let mut readers = conn.artifact_readers(&a.artifact_id, &a.sha256, n).await?;
    let second = (readers.len() > 1).then(|| readers.pop()).flatten();
    let first = readers
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no reader of the artifact"))?;
    Ok((first, second))
}

fn write_artifact(
    root: &OwnedFd,
    a: &Artifact,
    readers: (BlobReader, Option<BlobReader>),
) -> anyhow::Result<()> {
    let rel = checked_path(&a.path)?;
    let (reader, second) = readers;
    match a.kind {
        ArtifactKind::File => {
            let (parents, name) = rel
                .split_last()
                .ok_or_else(|| anyhow::anyhow!("empty artifact path"))?;
            let dir = open_dirs(root, &parents)?;
            write_file(&dir, name, reader, a.mode, Some((&a.sha256, a.size_bytes)))
        }
        ArtifactKind::Directory => {
            // Re-hash the tar first, then unpack a second read of it.
            let (digest, size) = hash_all(reader)?;
            if digest != a.sha256 || size != a.size_bytes {
                bail!(
                    "stored tar has {size} bytes sha256 {digest}, the record says {} bytes sha256 {}",
                    a.size_bytes,
                    a.sha256
                );
            }
            let comps: Vec<&str> = rel.components().collect();
            let dir = open_dirs(root, &comps)?;
            let reader = second.ok_or_else(|| anyhow::anyhow!("no second reader of the tar"))?;
            unpack_dir_tar(&dir, reader)
        }
    }
}

/// Lexical checks ([`WorkspacePath::parse_entry`]): relative, no `..`, not the root.
fn checked_path(path: &str) -> anyhow::Result<WorkspacePath> {
    WorkspacePath::parse_entry(path).map_err(|e| anyhow::anyhow!("refusing artifact path: {e}"))
}

/// Opens (creating as needed) `comps` below `root`, never following a symlink.
fn open_dirs(root: &OwnedFd, comps: &[&str]) -> anyhow::Result<OwnedFd> {
    let mut cur = root.try_clone()?;
    for comp in comps {
        if comp.is_empty() || *comp == "." || *comp == ".." || comp.contains('/') {
            bail!("refusing path component {comp:?}");
        }
        match rustix::fs::mkdirat(&cur, *comp, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("creating directory {comp:?}"));
            }
        }
        cur = match rustix::fs::openat(&cur, *comp, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                bail!("{comp:?} is a symlink or not a directory: refusing to follow it")
            }
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("opening directory {comp:?}"));
            }
        };
    }
    Ok(cur)
}

/// Writes `reader` to a temporary file in `dir`, checks the digest, renames it to `name`.
fn write_file(
    dir: &OwnedFd,
    name: &str,
    mut reader: impl Read,
    mode: u32,
    expect: Option<(&Sha256Digest, u64)>,
) -> anyhow::Result<()> {
    let tmp = format!(".crownest-{}.tmp", rand_suffix());
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("creating a temporary file for {name:?}"))?;
    let result = (|| -> anyhow::Result<()> {
        let mut file = io::BufWriter::with_capacity(256 * 1024, File::from(fd));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the stored blob"),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            file.write_all(&buf[..n]).context("writing")?;
        }
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .context("writing")?;
        if let Some((sha, len)) = expect {
            let got = Sha256Digest::from_bytes(&hasher.finalize().into());
            if got != *sha || size != len {
                bail!(
                    "stored blob has {size} bytes sha256 {got}, the record says {len} bytes sha256 {sha}"
                );
            }
        }
        rustix::fs::fchmod(file.as_fd(), Mode::from_raw_mode(mode & 0o777))
            .map_err(io::Error::from)?;
        file.sync_all().ok();
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)
            .map_err(io::Error::from)
            .with_context(|| format!("moving {name:?} into place"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    result
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

fn hash_all(mut reader: impl Read) -> anyhow::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the stored blob"),
        }
    }
    Ok((Sha256Digest::from_bytes(&hasher.finalize().into()), size))
}

/// Unpacks a directory artifact's tar (regular files and directories only) into `dir`.
fn unpack_dir_tar(dir: &OwnedFd, reader: impl Read) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("reading the directory tar")? {
        let entry = entry.context("reading the directory tar")?;
        let raw = entry.path_bytes().into_owned();
        let path = Path::new(OsStr::from_bytes(&raw));
        let mut comps = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(s) => comps.push(
                    s.to_str()
                        .ok_or_else(|| anyhow::anyhow!("entry {path:?} is not UTF-8"))?
                        .to_owned(),
                ),
                Component::CurDir => {}
                _ => bail!("entry {path:?} is absolute or climbs out: refused"),
            }
        }
        let comps: Vec<&str> = comps.iter().map(String::as_str).collect();
        let mode = entry.header().mode().unwrap_or(0o644);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                open_dirs(dir, &comps)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let Some((name, parents)) = comps.split_last() else {
                    bail!("entry with an empty name");
                };
                let parent = open_dirs(dir, parents)?;
                write_file(&parent, name, entry, mode, None)?;
            }
            other => {
                bail!("entry {path:?} has type {other:?}: only files and directories are exported")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root(dir: &Path) -> OwnedFd {
        rustix::fs::open(dir, DIR_FLAGS, Mode::empty()).unwrap()
    }

    #[test]
    fn symlinks_below_the_root_are_never_followed() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), out.path().join("out")).unwrap();
        let r = root(out.path());
        let err = open_dirs(&r, &["out"]).unwrap_err();
        assert!(err.to_string().contains("refusing to follow"), "{err}");
        // A symlink where the file goes is replaced, not written through.
        std::os::unix::fs::symlink(outside.path().join("victim"), out.path().join("f")).unwrap();
        write_file(&r, "f", &b"data"[..], 0o644, None).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert_eq!(std::fs::read(out.path().join("f")).unwrap(), b"data");
    }

    #[test]
    fn parent_components_and_absolute_paths_are_refused() {
        assert!(checked_path("../x").is_err());
        assert!(checked_path("a/../../x").is_err());
        assert!(checked_path("/etc/passwd").is_err());
        assert_eq!(checked_path("./a//b").unwrap().as_str(), "a/b");
        assert!(checked_path("./").is_err());
    }

    #[test]
    fn a_wrong_digest_leaves_nothing_behind() {
        let out = tempfile::tempdir().unwrap();
        let r = root(out.path());
        let wrong = Sha256Digest::of(b"something else");
        let err = write_file(&r, "f", &b"data"[..], 0o644, Some((&wrong, 4))).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn directory_tars_unpack_with_modes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "sub", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(2);
        b.append_data(&mut h, "sub/x.sh", &b"hi"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack_dir_tar(&root(out.path()), &bytes[..]).unwrap();
        let p = out.path().join("sub/x.sh");
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
}
