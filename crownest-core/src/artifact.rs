//! Artifact collection: no-follow, fd-relative reads confined to the workspace (DESIGN §2.5).

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::event::ArtifactErrorReason;
use crate::run::ArtifactKind;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// `O_NONBLOCK` so that a fifo swapped in after the `fstatat` check cannot block the open.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);
/// Directory artifacts deeper than this are not descended (the subtree is reported in
/// `skipped`); every level holds one fd.
const MAX_TAR_DEPTH: usize = 128;

/// One collected artifact, ready to be streamed into the store.
pub struct CollectedArtifact {
    /// File or directory tar.
    pub kind: ArtifactKind,
    /// Permission bits of the source.
    pub mode: u32,
    /// Exact size of what `reader` yields.
    pub size_bytes: u64,
    /// The bytes.
    pub reader: Box<dyn Read + Send>,
    /// Entries of a directory that were skipped (links, special files, ...), for reporting.
    pub skipped: Vec<SkippedEntry>,
}

/// An entry of a directory artifact that was not put into its tar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SkippedEntry {
    /// Workspace-relative path.
    pub path: String,
    /// Why.
    pub reason: SkipReason,
}

/// Why an entry of a directory artifact was skipped. Serialized as a snake_case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// A symlink (never followed).
    Symlink,
    /// A fifo, socket or device (never opened).
    SpecialFile,
    /// A directory deeper than the collector descends.
    TooDeep,
    /// It could not be opened, or was replaced while being collected.
    Unreadable,
}

impl std::fmt::Debug for CollectedArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectedArtifact")
            .field("kind", &self.kind)
            .field("mode", &self.mode)
            .field("size_bytes", &self.size_bytes)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// Why an artifact could not be collected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {message}")]
pub struct ArtifactFailure {
    /// Typed reason.
    pub reason: ArtifactErrorReason,
    /// Details (names the path).
    pub message: String,
}

impl ArtifactFailure {
    /// Builds a failure.
    pub fn new(reason: ArtifactErrorReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Collects `path` (relative, validated) from the workspace directory `root` on this host,
/// never following a symlink (every component opened with `O_NOFOLLOW` relative to its
/// parent's fd), regular files only (a directory becomes a tar of its regular files and
/// subdirectories; links are skipped and reported), refusing anything over `max_bytes`
/// before reading it.
///
/// * A lexically invalid path (see [`crate::spec::WorkspacePath::parse_entry`]) →
///   [`ArtifactErrorReason::InvalidPath`].
/// * Nothing at the path, or a component that is not a directory →
///   [`ArtifactErrorReason::NotFound`] (an I/O error while reading is reported the same way,
///   with the error in the message).
/// * A symlink as any component: never followed. If its target is absolute or climbs out
///   of the workspace (resolved lexically from the link's directory) →
///   [`ArtifactErrorReason::EscapesWorkspace`], otherwise
///   [`ArtifactErrorReason::NotRegular`] ("symlinks are not followed").
/// * A fifo, socket or device → [`ArtifactErrorReason::NotRegular`]; it is never opened
///   (type checked with `fstatat` first, and the open is `O_NONBLOCK` and re-checked with
///   `fstat`, so a fifo can never hang collection).
/// * A regular file over `max_bytes` → [`ArtifactErrorReason::TooLarge`], before any byte is
///   read. The reader yields exactly `size_bytes` bytes (an error if the file shrank).
/// * A directory → an uncompressed, deterministic tar (GNU format, names sorted bytewise,
///   mtime 0, uid/gid 0, no user/group names, permission bits kept) of its regular files and
///   subdirectories, spooled to an anonymous temp file; symlinks and special files are
///   skipped and listed in `skipped` (workspace-relative paths). A tar over `max_bytes` →
///   [`ArtifactErrorReason::TooLarge`] (checked before each file is read).
///
/// `mode` is the permission bits (`& 0o777`) of the file or directory.
pub fn collect_from_dir(
    root: &Path,
    path: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = rustix::fs::open(root, flags, Mode::empty()).map_err(|e| {
        ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!(
                "{path:?}: the workspace {} cannot be opened: {e}",
                root.display()
            ),
        )
    })?;
    collect_from_fd(dir.as_fd(), path, max_bytes)
}

/// [`collect_from_dir`] relative to an open workspace directory `root` (nothing of the
/// workspace's own path is resolved again, so no component of it can be swapped).
pub fn collect_from_fd(
    root: BorrowedFd<'_>,
    path: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let norm = crate::spec::WorkspacePath::parse_entry(path).map_err(|e| {
        ArtifactFailure::new(
            ArtifactErrorReason::InvalidPath,
            format!("invalid artifact path {path:?}: {e}"),
        )
    })?;
    let Some((parents, name)) = norm.split_last() else {
        return Err(ArtifactFailure::new(
            ArtifactErrorReason::InvalidPath,
            format!("invalid artifact path {path:?}"),
        ));
    };
    let mut dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(|e| {
        ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("{path:?}: the workspace cannot be opened: {e}"),
        )
    })?;
    for (i, c) in parents.iter().enumerate() {
        dir = rustix::fs::openat(&dir, *c, DIR_FLAGS, Mode::empty())
            .map_err(|e| classify(&dir, c, i, path, e))?;
    }
    let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| classify(&dir, name, parents.len(), path, e))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => collect_file(&dir, name, &st, path, max_bytes),
        FileType::Directory => {
            let fd = rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| classify(&dir, name, parents.len(), path, e))?;
            collect_dir(fd, &st, norm.as_str(), max_bytes)
        }
        FileType::Symlink => Err(symlink_failure(&dir, name, parents.len(), path)),
        other => Err(ArtifactFailure::new(
            ArtifactErrorReason::NotRegular,
            format!(
                "{path:?} is a {}, not a regular file or directory",
                type_name(other)
            ),
        )),
    }
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symlink",
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        _ => "special file",
    }
}

/// Explains why `name` (in `dir`, at `depth` components below the root) could not be
/// opened.
fn classify(dir: &OwnedFd, name: &str, depth: usize, path: &str, e: Errno) -> ArtifactFailure {
    if e == Errno::NOENT {
        return ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("{path:?}: {name:?} does not exist"),
        );
    }
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            symlink_failure(dir, name, depth, path)
        }
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            ArtifactFailure::new(
                ArtifactErrorReason::NotFound,
                format!(
                    "{path:?}: {name:?} is a {}, not a directory",
                    type_name(FileType::from_raw_mode(st.st_mode))
                ),
            )
        }
        _ => ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("{path:?}: {name:?} cannot be opened: {e}"),
        ),
    }
}

/// A symlink on the path: never followed; says whether it points outside the workspace.
fn symlink_failure(dir: &OwnedFd, name: &str, depth: usize, path: &str) -> ArtifactFailure {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
        .unwrap_or_default();
    let escapes = target.starts_with('/') || {
        let mut d = depth as i64;
        let mut out = false;
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    d -= 1;
                    out |= d < 0;
                }
                _ => d += 1,
            }
        }
        out
    };
    if escapes {
        ArtifactFailure::new(
            ArtifactErrorReason::EscapesWorkspace,
            format!("{path:?}: {name:?} is a symlink to {target:?}, outside the workspace"),
        )
    } else {
        ArtifactFailure::new(
            ArtifactErrorReason::NotRegular,
            format!("{path:?}: {name:?} is a symlink (to {target:?}); symlinks are not followed"),
        )
    }
}

/// Opens a regular file no-follow and non-blocking, and checks it is still the file that
/// `expected` described.
fn open_regular(dir: &OwnedFd, name: &CStr, expected: &Stat) -> io::Result<(File, Stat)> {
    let fd = rustix::fs::openat(dir, name, FILE_FLAGS, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_ino != expected.st_ino
        || st.st_dev != expected.st_dev
    {
        return Err(io::Error::other("replaced while being collected"));
    }
    Ok((File::from(fd), st))
}

fn collect_file(
    dir: &OwnedFd,
    name: &str,
    st: &Stat,
    path: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let size = st.st_size as u64;
    if size > max_bytes {
        return Err(ArtifactFailure::new(
            ArtifactErrorReason::TooLarge,
            format!("{path:?} is {size} bytes, over the limit of {max_bytes}"),
        ));
    }
    let cname = std::ffi::CString::new(name).map_err(|_| {
        ArtifactFailure::new(
            ArtifactErrorReason::InvalidPath,
            format!("{path:?} contains NUL"),
        )
    })?;
    let (file, st) = open_regular(dir, &cname, st).map_err(|e| {
        ArtifactFailure::new(
            ArtifactErrorReason::NotRegular,
            format!("{path:?} cannot be opened as a regular file: {e}"),
        )
    })?;
    // The size is re-read from the opened file; it must still fit.
    let size = st.st_size as u64;
    if size > max_bytes {
        return Err(ArtifactFailure::new(
            ArtifactErrorReason::TooLarge,
            format!("{path:?} is {size} bytes, over the limit of {max_bytes}"),
        ));
    }
    Ok(CollectedArtifact {
        kind: ArtifactKind::File,
        mode: st.st_mode & 0o777,
        size_bytes: size,
        reader: Box::new(ExactReader {
            inner: file,
            remaining: size,
        }),
        skipped: Vec::new(),
    })
}

/// Yields exactly `remaining` bytes of `inner`, or an error if it ends early.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being collected",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Counts the bytes of the tar being written.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct DirTar {
    out: tar::Builder<Counting<BufWriter<File>>>,
    max_bytes: u64,
    /// Workspace-relative path of the directory artifact.
    base: String,
    skipped: Vec<SkippedEntry>,
}

fn collect_dir(
    fd: OwnedFd,
    st: &Stat,
    base: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let io_fail = |e: io::Error| {
        ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("{base:?} could not be collected: {e}"),
        )
    };
    let spool = tempfile::tempfile().map_err(io_fail)?;
    let mut t = DirTar {
        out: tar::Builder::new(Counting {
            inner: BufWriter::with_capacity(256 * 1024, spool),
            count: 0,
        }),
        max_bytes,
        base: base.to_string(),
        skipped: Vec::new(),
    };
    t.walk(&fd, &[], 0)?;
    let counting = t.out.into_inner().map_err(io_fail)?;
    let size = counting.count;
    if size > max_bytes {
        return Err(t_too_large(base, max_bytes));
    }
    let mut spool = counting
        .inner
        .into_inner()
        .map_err(|e| io_fail(e.into_error()))?;
    spool.rewind().map_err(io_fail)?;
    Ok(CollectedArtifact {
        kind: ArtifactKind::Directory,
        mode: st.st_mode & 0o777,
        size_bytes: size,
        reader: Box::new(ExactReader {
            inner: spool,
            remaining: size,
        }),
        skipped: t.skipped,
    })
}

fn t_too_large(base: &str, max_bytes: u64) -> ArtifactFailure {
    ArtifactFailure::new(
        ArtifactErrorReason::TooLarge,
        format!("the tar of directory {base:?} is over the limit of {max_bytes} bytes"),
    )
}

/// Bytes a tar entry takes: header, a GNU long-name record if the name needs one, data.
fn tar_entry_bytes(name_len: usize, size: u64) -> u64 {
    let long = if name_len >= 100 {
        512 + (name_len as u64 + 1).div_ceil(512) * 512
    } else {
        0
    };
    512 + long + size.div_ceil(512) * 512
}

impl DirTar {
    fn display(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.base, String::from_utf8_lossy(rel))
    }

    fn skip(&mut self, rel: &[u8], reason: SkipReason) {
        let path = self.display(rel);
        self.skipped.push(SkippedEntry { path, reason });
    }

    fn fail(&self, rel: &[u8], e: impl std::fmt::Display) -> ArtifactFailure {
        ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("{:?} could not be collected: {e}", self.display(rel)),
        )
    }

    /// Reserves room for an entry (plus the end-of-archive blocks) before it is read.
    fn reserve(&self, name_len: usize, size: u64) -> Result<(), ArtifactFailure> {
        let projected = self
            .out
            .get_ref()
            .count
            .saturating_add(tar_entry_bytes(name_len, size))
            .saturating_add(1024);
        if projected > self.max_bytes {
            return Err(t_too_large(&self.base, self.max_bytes));
        }
        Ok(())
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o777);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn walk(&mut self, dir: &OwnedFd, rel: &[u8], depth: usize) -> Result<(), ArtifactFailure> {
        let mut names: Vec<std::ffi::CString> = Vec::new();
        let entries = rustix::fs::Dir::read_from(dir).map_err(|e| self.fail(rel, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.fail(rel, e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        for name in names {
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let st = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.fail(&child, e)),
            };
            let path = Path::new(OsStr::from_bytes(&child));
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory if depth < MAX_TAR_DEPTH => {
                    let sub = match rustix::fs::openat(dir, &name, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(_) => {
                            self.skip(&child, SkipReason::Unreadable);
                            continue;
                        }
                    };
                    self.reserve(child.len() + 1, 0)?;
                    let mut h = Self::header(tar::EntryType::Directory, st.st_mode, 0);
                    self.out
                        .append_data(&mut h, path, io::empty())
                        .map_err(|e| self.fail(&child, e))?;
                    self.walk(&sub, &child, depth + 1)?;
                }
                FileType::RegularFile => {
                    let size = st.st_size as u64;
                    self.reserve(child.len(), size)?;
                    let (file, st) = match open_regular(dir, &name, &st) {
                        Ok(f) => f,
                        Err(_) => {
                            self.skip(&child, SkipReason::Unreadable);
                            continue;
                        }
                    };
                    let size = st.st_size as u64;
                    self.reserve(child.len(), size)?;
                    let mut h = Self::header(tar::EntryType::Regular, st.st_mode, size);
                    let data = ExactReader {
                        inner: file,
                        remaining: size,
                    };
                    self.out
                        .append_data(&mut h, path, data)
                        .map_err(|e| self.fail(&child, e))?;
                }
                FileType::Directory => self.skip(&child, SkipReason::TooDeep),
                FileType::Symlink => self.skip(&child, SkipReason::Symlink),
                _ => self.skip(&child, SkipReason::SpecialFile),
            }
        }
        Ok(())
    }
}
