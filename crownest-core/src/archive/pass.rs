//! The one pass shared by `validate` and `extract`, as a pipeline:
//!
//! ```text
//! source (hash, count, ratio) ─▶ parse (typed entries) ─▶ policy (accept/refuse, the tree)
//!   ─▶ [extract only] writer (lanes, ConfinedDir) inside staging
//! ```
//!
//! This file only wires the rooms together: it asks the policy about every entry in a fixed
//! order, keeps the summary and the progress, and hands accepted entries to the [`Sink`].

use std::io::{BufRead, Read};
use std::path::Path;
use std::rc::Rc;

use super::parse::{Parser, TarEntry};
use super::policy::{self, Kind, Placement, Refusal, Tree};
use super::source::{self, INFLATED_BUF, Shared, Stop, Stream};
use super::staging::Staging;
use super::writer::{self, CHUNK, Op, Sink};
use super::{ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::error::{Error, RejectReason, Result};
use crate::event::ArchivePhase;
use crate::ids::Sha256Digest;
use crate::run::ArchiveDescriptor;

/// Progress is reported at most once per this many compressed bytes or entries.
const PROGRESS_BYTES: u64 = 64 * 1024;
const PROGRESS_ENTRIES: u64 = 100;

/// How the pass treats the digest of the compressed bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Digest<'a> {
    /// Hash them and check the size and digest against this descriptor.
    Check(&'a ArchiveDescriptor),
    /// Hash them (the summary carries the digest).
    Compute,
    /// Do not hash: another reader of the same bytes checks their digest (the store, as
    /// they stream in). The summary's `sha256` is all zeros. The size, when known, only
    /// sizes the pass's buffers (the other reader checks it).
    Elsewhere(Option<u64>),
}

/// Runs the pass: `dest = None` validates only, `Some` extracts through a staging directory.
pub(super) fn run(
    reader: impl Read,
    dest: Option<&Path>,
    digest: Digest<'_>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    let Some(dest) = dest else {
        let phase = ArchivePhase::Verifying;
        return pass(
            reader,
            &mut Sink::validate(),
            digest,
            policy,
            progress,
            phase,
        );
    };
    let staging = Staging::create(dest)?;
    let root = staging.open()?;
    let summary = writer::write_through(root, |sink| {
        let phase = ArchivePhase::Extracting;
        pass(reader, sink, digest, policy, progress, phase)
    })?;
    staging.commit()?;
    Ok(summary)
}

fn pass<R: Read>(
    reader: R,
    sink: &mut Sink<'_>,
    digest: Digest<'_>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
    phase: ArchivePhase,
) -> Result<ExtractSummary> {
    let (expected, size_hint) = match digest {
        Digest::Check(e) => (Some(e), Some(e.size_bytes)),
        Digest::Compute => (None, None),
        Digest::Elsewhere(size) => (None, size),
    };
    let hash = !matches!(digest, Digest::Elsewhere(_));
    let declared = expected.map(|e| e.size_bytes);
    let (stream, shared) = source::open(reader, declared, size_hint, policy, hash);
    let mut p = Pass {
        policy,
        shared: shared.clone(),
        phase,
        progress,
        summary: ExtractSummary::default(),
        tree: Tree::new(policy),
        root_mode: None,
        last_progress: (0, 0),
        scratch: Vec::new(),
        scratch_size: source::buffer_size(size_hint, INFLATED_BUF),
    };
    let mut archive = tar::Archive::new(stream);
    let mut parser = Parser::new(&mut archive, shared, policy)?;
    while let Some((entry, mut data)) = parser.next_entry()? {
        p.entry(entry, &mut data, sink)?;
        p.tick(false);
    }
    let end_of_entries = parser.end_of_entries()?;
    p.finish(archive.into_inner(), end_of_entries, sink, expected)
}

/// The state of one pass.
struct Pass<'a> {
    policy: &'a ExtractPolicy,
    shared: Rc<Shared>,
    phase: ArchivePhase,
    progress: &'a mut dyn FnMut(ExtractProgress),
    summary: ExtractSummary,
    tree: Tree,
    root_mode: Option<u32>,
    last_progress: (u64, u64),
    /// For entry data that is read but not written, and the padding after the entries.
    scratch: Vec<u8>,
    /// Its size once allocated (a small archive's own size: see `source::buffer_size`).
    scratch_size: usize,
}

/// Attaches a refusal to the entry named `entry`.
fn refusal(entry: &str) -> impl FnOnce(Refusal) -> Error + '_ {
    move |r| policy::rejection(r, Some(entry))
}

/// Attaches a refusal to the archive as a whole.
fn archive_refusal(r: Refusal) -> Error {
    policy::rejection(r, None)
}

impl Pass<'_> {
    fn tick(&mut self, force: bool) {
        let bytes = self.shared.compressed();
        let entries = self.summary.entries;
        let (lb, le) = self.last_progress;
        if force || bytes - lb >= PROGRESS_BYTES || entries - le >= PROGRESS_ENTRIES {
            self.last_progress = (bytes, entries);
            (self.progress)(ExtractProgress {
                phase: self.phase,
                bytes_done: bytes,
                entries,
            });
        }
    }

    /// One entry: the policy's checks in order (count, path, kind, sizes, placement), then
    /// the operations that create it.
    fn entry<R: Read>(
        &mut self,
        entry: TarEntry,
        data: &mut tar::Entry<'_, R>,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let TarEntry {
            raw_path,
            name,
            ty,
            sparse,
            size,
            pax_size,
            mode,
            mtime,
            link,
        } = entry;
        self.tree.count_entry().map_err(refusal(&name))?;
        self.summary.entries = self.tree.entries();
        let path = policy::normalize_entry_path(&raw_path, self.policy).map_err(refusal(&name))?;
        let kind = policy::entry_kind(ty, sparse, &raw_path).map_err(refusal(&name))?;
        policy::check_pax_size(pax_size, size).map_err(refusal(&name))?;
        let mode = policy::entry_mode(mode.map_err(refusal(&name))?);
        if path.is_empty() {
            self.root_mode = Some(policy::root_mode(kind, mode).map_err(refusal(&name))?);
            return Ok(());
        }
        match kind {
            Kind::Dir => {
                let placement = self.tree.place(&path, Kind::Dir).map_err(refusal(&name))?;
                let mode = policy::dir_mode(mode);
                if let Placement::New { implied_dirs } = placement {
                    self.implied(&path, implied_dirs, sink)?;
                    self.summary.dirs += 1;
                    if sink.writes() {
                        sink.push(Op::Mkdir { path, mode })?;
                    }
                } else if sink.writes() {
                    sink.push(Op::ChmodDir { path, mode })?;
                }
            }
            Kind::Symlink => {
                let target = policy::check_symlink_target(&path, &link, self.policy)
                    .map_err(refusal(&name))?;
                let placement = self
                    .tree
                    .place(&path, Kind::Symlink)
                    .map_err(refusal(&name))?;
                if let Placement::New { implied_dirs } = placement {
                    self.implied(&path, implied_dirs, sink)?;
                }
                self.summary.symlinks += 1;
                if sink.writes() {
                    sink.push(Op::Symlink { path, target })?;
                }
            }
            Kind::Hardlink => {
                let target = policy::normalize_hardlink_target(&link, self.policy)
                    .map_err(refusal(&name))?;
                policy::check_hardlink_target(&target, self.tree.get(&target))
                    .map_err(refusal(&name))?;
                let placement = self
                    .tree
                    .place(&path, Kind::Hardlink)
                    .map_err(refusal(&name))?;
                if let Placement::New { implied_dirs } = placement {
                    self.implied(&path, implied_dirs, sink)?;
                }
                self.summary.hardlinks += 1;
                if sink.writes() {
                    sink.push(Op::Hardlink { path, target })?;
                }
            }
            Kind::File => {
                let total = policy::check_file_size(size, self.summary.bytes, self.policy)
                    .map_err(refusal(&name))?;
                let placement = self.tree.place(&path, Kind::File).map_err(refusal(&name))?;
                match placement {
                    Placement::New { implied_dirs } => self.implied(&path, implied_dirs, sink)?,
                    Placement::ReplaceFile => {
                        if sink.writes() {
                            sink.push(Op::Unlink { path: path.clone() })?;
                        }
                    }
                    Placement::RepeatDir => {}
                }
                let file = NewFile { path, mode, mtime };
                self.file_data(data, size, &name, file, sink)?;
                self.summary.files += 1;
                self.summary.bytes = total;
            }
        }
        Ok(())
    }

    /// The directories `path` implies (prefixes of it, top-down), already placed in the
    /// tree.
    fn implied(&mut self, path: &str, dirs: Vec<usize>, sink: &mut Sink<'_>) -> Result<()> {
        self.summary.entries = self.tree.entries();
        for end in dirs {
            self.summary.dirs += 1;
            if sink.writes() {
                sink.push(Op::Mkdir {
                    path: path[..end].to_string(),
                    mode: policy::IMPLIED_DIR_MODE,
                })?;
            }
        }
        Ok(())
    }

    /// Reads the `size` data bytes of the file entry `name`: discarded when validating,
    /// else sent to the writer in chunks of at most [`CHUNK`] bytes.
    fn file_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
        name: &str,
        file: NewFile,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let truncated = || {
            policy::rejection(
                (
                    RejectReason::Corrupt,
                    "the archive ends inside this entry".into(),
                ),
                Some(name),
            )
        };
        if !sink.writes() {
            if self.scratch.is_empty() {
                self.scratch = vec![0; self.scratch_size];
            }
            let mut left = size;
            while left > 0 {
                let want = left.min(self.scratch.len() as u64) as usize;
                let n = entry
                    .read(&mut self.scratch[..want])
                    .map_err(|e| self.shared.read_error(e, Some(name)))?;
                if n == 0 {
                    return Err(truncated());
                }
                left -= n as u64;
                if left > 0 {
                    self.tick(false);
                }
            }
            return Ok(());
        }
        let NewFile { path, mode, mtime } = file;
        let mut left = size;
        let mut first = Some(path);
        loop {
            let want = left.min(CHUNK);
            let mut data = Vec::with_capacity(want as usize);
            (&mut *entry)
                .take(want)
                .read_to_end(&mut data)
                .map_err(|e| self.shared.read_error(e, Some(name)))?;
            if (data.len() as u64) < want {
                return Err(truncated());
            }
            left -= want;
            let last = left == 0;
            let op = match first.take() {
                Some(path) => Op::File {
                    path,
                    mode,
                    mtime,
                    data,
                    last,
                },
                None => Op::Chunk { data, last },
            };
            sink.push(op)?;
            if last {
                return Ok(());
            }
            self.tick(false);
        }
    }

    /// After the entries: the end-of-archive marker, nothing but zero padding up to the end
    /// of the gzip member (whose CRC and length are checked on the way), nothing after the
    /// gzip member, and the declared size and digest.
    fn finish<R: Read>(
        mut self,
        mut stream: Stream<R>,
        end_of_entries: u64,
        sink: &mut Sink<'_>,
        expected: Option<&ArchiveDescriptor>,
    ) -> Result<ExtractSummary> {
        policy::check_end_marker(self.shared.inflated(), end_of_entries)
            .map_err(archive_refusal)?;
        if self.scratch.is_empty() {
            self.scratch = vec![0; self.scratch_size];
        }
        let mut padding = 0u64;
        loop {
            let n = stream
                .read(&mut self.scratch)
                .map_err(|e| self.shared.read_error(e, None))?;
            if n == 0 {
                break;
            }
            padding =
                policy::check_padding(&self.scratch[..n], padding).map_err(archive_refusal)?;
        }
        let mut compressed = source::compressed(stream);
        let rest = compressed
            .fill_buf()
            .map_err(|e| Error::io("reading the archive", e))?;
        if let Err(trailing) = policy::check_gzip_end(rest) {
            // Bytes beyond the declared size are that refusal, not trailing data.
            return Err(archive_refusal(match self.shared.take_stop() {
                Some(Stop::OverDeclaredSize(r)) => r,
                _ => trailing,
            }));
        }
        let digest = compressed.into_inner().digest();
        self.summary.compressed_bytes = self.shared.compressed();
        self.summary.sha256 = digest.unwrap_or_default();
        if let (Some(expected), Some(digest)) = (expected, digest) {
            expected.check(
                self.summary.compressed_bytes,
                &Sha256Digest::from_bytes(&digest),
            )?;
        }
        if sink.writes() {
            sink.push(Op::ChmodDir {
                path: String::new(),
                mode: self.root_mode.unwrap_or(policy::ROOT_MODE),
            })?;
            sink.flush()?;
        }
        self.tick(true);
        Ok(self.summary)
    }
}

/// What the writer needs to create a regular file, besides its data.
struct NewFile {
    path: String,
    mode: u32,
    mtime: Option<i64>,
}
