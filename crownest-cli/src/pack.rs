//! Deterministic packing of a source directory into a `.tar.gz`.
//!
//! The same tree always gives the same bytes (for a given CrowNest version), so its sha256
//! identifies the tree and the store keeps one copy of it:
//!
//! * every entry below the directory, paths relative to it, sorted bytewise, no `./` prefix;
//! * regular files, directories and symlinks only (the link target is stored as is; one
//!   that leaves the tree is refused by the extraction policy at upload); a fifo, socket
//!   or device is an error. Hard links are packed as independent files;
//! * mtime 0, uid/gid 0, no user/group names, permission bits kept (`mode & 0o777`);
//! * GNU tar headers (long names as GNU long-name records), gzip level 6, gzip mtime 0.
//!
//! Nothing is ignored: no `.gitignore`, no `.git` exclusion. Pack what you mean to run
//! (e.g. `git archive --format=tar.gz HEAD > src.tgz` for a clean checkout).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use crownest_core::{ArchiveDescriptor, Sha256Digest};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

use crate::exit::usage;

/// Per-byte callback while packing (bytes of file content read so far, total).
pub(crate) type PackProgress<'a> = &'a mut dyn FnMut(u64, u64);

/// What [`pack_dir`] collected before writing.
#[derive(Debug)]
enum Item {
    Dir {
        rel: Vec<u8>,
        mode: u32,
    },
    File {
        rel: Vec<u8>,
        path: PathBuf,
        mode: u32,
        size: u64,
    },
    Symlink {
        rel: Vec<u8>,
        target: PathBuf,
    },
}

impl Item {
    fn rel(&self) -> &[u8] {
        match self {
            Item::Dir { rel, .. } | Item::File { rel, .. } | Item::Symlink { rel, .. } => rel,
        }
    }
}

/// Walks `root` without following symlinks and lists every entry, sorted by relative path.
fn walk(root: &Path) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let path = entry.path();
            let mut rel = rel_dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(entry.file_name().as_bytes());
            let meta =
                fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            let ft = meta.file_type();
            let mode = meta.permissions().mode() & 0o777;
            if ft.is_symlink() {
                let target =
                    fs::read_link(&path).with_context(|| format!("readlink {}", path.display()))?;
                items.push(Item::Symlink { rel, target });
            } else if ft.is_dir() {
                items.push(Item::Dir {
                    rel: rel.clone(),
                    mode,
                });
                stack.push((path, rel));
            } else if ft.is_file() {
                items.push(Item::File {
                    rel,
                    path,
                    mode,
                    size: meta.len(),
                });
            } else {
                return Err(usage(format!(
                    "cannot pack {}: only regular files, directories and symlinks can be packed",
                    path.display()
                )));
            }
        }
    }
    items.sort_by(|a, b| a.rel().cmp(b.rel()));
    Ok(items)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes through to `inner`, hashing and counting what passes.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts file bytes read, for progress.
struct CountingReader<'a, 'b, R> {
    inner: R,
    done: &'a mut u64,
    total: u64,
    progress: &'a mut PackProgress<'b>,
}

impl<R: Read> Read for CountingReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done, self.total);
        Ok(n)
    }
}

/// Packs `root` into `out` (see the module docs) and returns the archive's descriptor.
pub(crate) fn pack_dir(
    root: &Path,
    out: &mut File,
    mut progress: PackProgress<'_>,
) -> anyhow::Result<ArchiveDescriptor> {
    let items = walk(root)?;
    let total: u64 = items
        .iter()
        .map(|i| match i {
            Item::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(256 * 1024, &mut *out),
        hasher: Sha256::new(),
        count: 0,
    };
    let gz = GzEncoder::new(hashing, Compression::new(6));
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut done = 0u64;
    for item in &items {
        let name = Path::new(std::ffi::OsStr::from_bytes(item.rel()));
        match item {
            Item::Dir { mode, .. } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                builder
                    .append_data(&mut h, name, io::empty())
                    .with_context(|| format!("packing {}", name.display()))?;
            }
            Item::Symlink { target, .. } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder
                    .append_link(&mut h, name, target)
                    .with_context(|| format!("packing {}", name.display()))?;
            }
            Item::File {
                path, mode, size, ..
            } => {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let reader = CountingReader {
                    inner: file.take(*size),
                    done: &mut done,
                    total,
                    progress: &mut progress,
                };
                let mut h = header(tar::EntryType::Regular, *mode, *size);
                builder.append_data(&mut h, name, reader).with_context(|| {
                    format!(
                        "packing {} (did it change while being packed?)",
                        path.display()
                    )
                })?;
            }
        }
    }
    let gz = builder.into_inner().context("finishing the tar")?;
    let mut hashing = gz.finish().context("finishing the gzip stream")?;
    hashing.flush().context("writing the packed archive")?;
    Ok(ArchiveDescriptor {
        size_bytes: hashing.count,
        sha256: Sha256Digest::from_bytes(&hashing.hasher.finalize().into()),
    })
}

/// sha256 and size of a file, read once.
pub(crate) fn describe_file(path: &Path) -> anyhow::Result<ArchiveDescriptor> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
            }
        }
    }
    Ok(ArchiveDescriptor {
        size_bytes: size,
        sha256: Sha256Digest::from_bytes(&hasher.finalize().into()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("b/sub")).unwrap();
        fs::write(dir.join("b/sub/z.txt"), b"zzz").unwrap();
        fs::write(dir.join("a.txt"), b"hello").unwrap();
        fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join(".gitignore"), b"a.txt\n").unwrap();
        symlink("a.txt", dir.join("link")).unwrap();
    }

    fn pack(dir: &Path) -> (Vec<u8>, ArchiveDescriptor) {
        let mut out = tempfile::tempfile().unwrap();
        let d = pack_dir(dir, &mut out, &mut |_, _| {}).unwrap();
        use std::io::Seek as _;
        out.rewind().unwrap();
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).unwrap();
        (bytes, d)
    }

    #[test]
    fn packing_is_deterministic_sorted_and_keeps_modes() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        tree(one.path());
        tree(two.path());
        // Different mtimes must not matter.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(two.path().join("a.txt"), b"hello").unwrap();
        let (a, da) = pack(one.path());
        let (b, db) = pack(two.path());
        assert_eq!(a, b);
        assert_eq!(da, db);
        assert_eq!(da.size_bytes, a.len() as u64);
        assert_eq!(da.sha256, Sha256Digest::of(&a));

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == "run.sh" {
                assert_eq!(h.mode().unwrap() & 0o777, 0o755);
            }
            if path == "link" {
                assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("a.txt"));
            }
            seen.push(path);
        }
        // Everything, sorted; .gitignore is just a file.
        assert_eq!(
            seen,
            [
                ".gitignore",
                "a.txt",
                "b",
                "b/sub",
                "b/sub/z.txt",
                "link",
                "run.sh"
            ]
        );
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let err = pack_dir(dir.path(), &mut out, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("pipe"), "{err}");
    }
}
