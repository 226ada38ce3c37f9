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
//! What is left out ([`Ignore::Files`], the default; [`Ignore::Nothing`] is `--no-ignore`):
//!
//! * every `.git` directory (the repository's history is not the work);
//! * what the tree's own `.gitignore` and `.crownestignore` files say, with git's syntax and
//!   precedence (a deeper file overrides a shallower one; in one directory `.crownestignore`
//!   overrides `.gitignore`; `!pattern` re-includes; an excluded directory is not entered).
//!   Only files inside the tree count (not `~/.gitignore`, `.git/info/exclude` or files
//!   above the root), so the same tree packs the same on every machine. The ignore files
//!   themselves are packed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use crownest_core::{ArchiveDescriptor, Sha256Digest};
use flate2::Compression;
use flate2::write::GzEncoder;
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
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

/// What packing a directory leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignore {
    /// `.git` directories and what `.gitignore` / `.crownestignore` files exclude.
    Files,
    /// Nothing (`--no-ignore`).
    Nothing,
}

/// The ignore files read in each directory, lowest precedence first.
const IGNORE_FILES: [&str; 2] = [".gitignore", ".crownestignore"];

/// The matchers that apply in one directory: its ancestors' (inside the tree) and its own.
type Matchers = std::rc::Rc<Vec<Gitignore>>;

/// Adds `dir`'s own ignore files to `parent`'s matchers.
fn matchers_of(dir: &Path, parent: &Matchers) -> anyhow::Result<Matchers> {
    let mut own = Vec::new();
    for name in IGNORE_FILES {
        let file = dir.join(name);
        if !fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut builder = GitignoreBuilder::new(dir);
        if let Some(e) = builder.add(&file) {
            return Err(usage(format!("cannot read {}: {e}", file.display())));
        }
        let matcher = builder
            .build()
            .map_err(|e| usage(format!("{}: {e}", file.display())))?;
        own.push(matcher);
    }
    if own.is_empty() {
        return Ok(parent.clone());
    }
    let mut all = Vec::clone(parent);
    all.extend(own);
    Ok(std::rc::Rc::new(all))
}

/// True when `path` is excluded: the most precise matcher that has an opinion decides.
fn excluded(matchers: &[Gitignore], path: &Path, is_dir: bool) -> bool {
    for m in matchers.iter().rev() {
        match m.matched(path, is_dir) {
            Match::None => continue,
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
        }
    }
    false
}

/// Walks `root` without following symlinks and lists every entry, sorted by relative path,
/// and what `ignore` left out (relative paths, directories with a trailing `/`).
fn walk(root: &Path, ignore: Ignore) -> anyhow::Result<(Vec<Item>, Vec<String>)> {
    let mut items = Vec::new();
    let mut left_out = Vec::new();
    let none: Matchers = std::rc::Rc::new(Vec::new());
    let top = match ignore {
        Ignore::Files => matchers_of(root, &none)?,
        Ignore::Nothing => none,
    };
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new(), top)];
    while let Some((dir, rel_dir, matchers)) = stack.pop() {
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
            if ignore == Ignore::Files
                && ((ft.is_dir() && entry.file_name() == ".git")
                    || excluded(&matchers, &path, ft.is_dir()))
            {
                let mut shown = String::from_utf8_lossy(&rel).into_owned();
                if ft.is_dir() {
                    shown.push('/');
                }
                left_out.push(shown);
                continue;
            }
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
                let inner = match ignore {
                    Ignore::Files => matchers_of(&path, &matchers)?,
                    Ignore::Nothing => matchers.clone(),
                };
                stack.push((path, rel, inner));
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
    left_out.sort();
    Ok((items, left_out))
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

/// Writes through to `inner`, hashing (when asked) and counting what passes.
struct HashingWriter<W> {
    inner: W,
    hasher: Option<Sha256>,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
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

/// What [`pack_dir`] made.
#[derive(Debug)]
pub(crate) struct Packed {
    /// The archive's size.
    pub(crate) size_bytes: u64,
    /// Its descriptor, when [`pack_dir`] was asked to hash.
    pub(crate) descriptor: Option<ArchiveDescriptor>,
    /// What was left out (sorted relative paths; directories end with `/`).
    pub(crate) left_out: Vec<String>,
}

/// Packs `root` into `out` (see the module docs), hashing what it writes when `hash` (a
/// local engine hashes the bytes itself as they stream in: no second hash).
pub(crate) fn pack_dir(
    root: &Path,
    out: &mut File,
    ignore: Ignore,
    hash: bool,
    mut progress: PackProgress<'_>,
) -> anyhow::Result<Packed> {
    let (items, left_out) = walk(root, ignore)?;
    let total: u64 = items
        .iter()
        .map(|i| match i {
            Item::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(256 * 1024, &mut *out),
        hasher: hash.then(Sha256::new),
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
    let size_bytes = hashing.count;
    Ok(Packed {
        size_bytes,
        descriptor: hashing.hasher.map(|h| ArchiveDescriptor {
            size_bytes,
            sha256: Sha256Digest::from_bytes(&h.finalize().into()),
        }),
        left_out,
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
        let (bytes, packed) = pack_with(dir, Ignore::Nothing);
        assert!(packed.left_out.is_empty());
        (bytes, packed.descriptor.unwrap())
    }

    fn pack_with(dir: &Path, ignore: Ignore) -> (Vec<u8>, Packed) {
        let mut out = tempfile::tempfile().unwrap();
        let d = pack_dir(dir, &mut out, ignore, true, &mut |_, _| {}).unwrap();
        use std::io::Seek as _;
        out.rewind().unwrap();
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).unwrap();
        (bytes, d)
    }

    fn names(bytes: &[u8]) -> Vec<String> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn ignore_files_are_honoured_with_gits_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [".git/objects", "node_modules/x", "src/gen", "docs", "keep"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in [
            ".git/HEAD",
            "node_modules/x/i.js",
            "src/a.py",
            "src/a.pyc",
            "src/gen/out.txt",
            "src/gen/keep.txt",
            "docs/big.pdf",
            "keep/a.log",
            "b.log",
            "secret.env",
        ] {
            fs::write(d.join(f), f).unwrap();
        }
        fs::write(
            d.join(".gitignore"),
            "node_modules/\n*.pyc\n*.log\n!keep/a.log\n",
        )
        .unwrap();
        // The deeper file overrides; .crownestignore overrides .gitignore in one directory.
        fs::write(d.join("src/.gitignore"), "gen/*\n!gen/keep.txt\n").unwrap();
        fs::write(d.join(".crownestignore"), "docs/\nsecret.env\n!b.log\n").unwrap();
        let (bytes, packed) = pack_with(d, Ignore::Files);
        assert_eq!(
            names(&bytes),
            [
                ".crownestignore",
                ".gitignore",
                "b.log",
                "keep",
                "keep/a.log",
                "src",
                "src/.gitignore",
                "src/a.py",
                "src/gen",
                "src/gen/keep.txt",
            ]
        );
        assert_eq!(
            packed.left_out,
            [
                ".git/",
                "docs/",
                "node_modules/",
                "secret.env",
                "src/a.pyc",
                "src/gen/out.txt"
            ]
        );
        // --no-ignore packs everything, .git included.
        let (bytes, packed) = pack_with(d, Ignore::Nothing);
        assert!(packed.left_out.is_empty());
        assert_eq!(names(&bytes).len(), 21);
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
        let err =
            pack_dir(dir.path(), &mut out, Ignore::Nothing, true, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("pipe"), "{err}");
    }
}
