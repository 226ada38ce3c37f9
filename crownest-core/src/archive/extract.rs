//! The one-pass extractor: hash and count the compressed bytes, inflate, parse the tar
//! stream entry by entry (raw entries: metadata records are sized before they are read),
//! apply the lexical policy, and — when extracting — hand the accepted entries to a writer
//! thread that creates them through a [`ConfinedDir`] inside a private staging directory.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use flate2::bufread::GzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::confined::{ConfinedDir, set_mtime};
use super::policy::{self, Kind, Pax, Placement, Tree};
use super::{ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::error::{Error, RejectReason, Result};
use crate::event::ArchivePhase;
use crate::run::ArchiveDescriptor;

/// Buffer between the source and the gzip decoder.
const COMPRESSED_BUF: usize = 64 * 1024;
/// Buffer between the gzip decoder and the tar parser (zlib-rs wants large reads).
const INFLATED_BUF: usize = 256 * 1024;
/// File data is handed to the writer in chunks of at most this size.
const CHUNK: u64 = 1 << 20;
/// A batch of writer operations is sent once it holds this many bytes or operations.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_OPS: usize = 512;
/// Batches in flight between the reader and the writer (bounds memory to ~10 MiB).
const CHANNEL_BATCHES: usize = 8;
/// Zero padding tolerated after the tar end-of-archive marker (tar pads to its record
/// size, 10 KiB by default).
const MAX_PADDING: u64 = 1 << 20;
/// Progress is reported at most once per this many compressed bytes or entries.
const PROGRESS_BYTES: u64 = 64 * 1024;
const PROGRESS_ENTRIES: u64 = 100;
/// Default mode of directories implied by deeper entries.
const IMPLIED_DIR_MODE: u32 = 0o755;
/// Mode of the extraction root unless the archive has a `./` entry.
const ROOT_MODE: u32 = 0o755;

/// Runs the pass: `dest = None` validates only, `Some` extracts through a staging directory.
pub(super) fn run(
    reader: impl Read,
    dest: Option<&Path>,
    expected: Option<&ArchiveDescriptor>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    let Some(dest) = dest else {
        let mut sink = Sink::Validate;
        return pass(
            reader,
            &mut sink,
            expected,
            policy,
            progress,
            ArchivePhase::Verifying,
        );
    };
    let staging = Staging::create(dest)?;
    let root = staging.open()?;
    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<Vec<Op>>(CHANNEL_BATCHES);
    let result = std::thread::scope(|s| {
        let cancel = &cancel;
        let writer = s.spawn(move || write_ops(ConfinedDir::new(root), rx, cancel));
        let mut sink = Sink::Write {
            tx,
            batch: Vec::new(),
            bytes: 0,
            gone: false,
        };
        let read = pass(
            reader,
            &mut sink,
            expected,
            policy,
            progress,
            ArchivePhase::Extracting,
        );
        if read.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let gone = matches!(sink, Sink::Write { gone: true, .. });
        drop(sink);
        let written = match writer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match (read, written) {
            (Err(_), Err(w)) if gone => Err(w),
            (Err(r), _) => Err(r),
            (Ok(_), Err(w)) => Err(w),
            (Ok(summary), Ok(())) => Ok(summary),
        }
    })?;
    staging.commit()?;
    Ok(result)
}

/// Why the byte readers stopped a read (the tar and gzip layers only see an `io::Error`).
#[derive(Debug)]
enum Stop {
    Ratio { inflated: u64, compressed: u64 },
    OverDeclaredSize,
    Source,
}

/// Counters shared by the readers and the pass (one thread: `Rc` + `Cell`).
#[derive(Default)]
struct Shared {
    compressed: Cell<u64>,
    inflated: Cell<u64>,
    stop: RefCell<Option<Stop>>,
}

/// The source: hashes and counts the compressed bytes.
struct Source<R> {
    inner: R,
    hasher: Sha256,
    shared: Rc<Shared>,
    limit: Option<u64>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    *self.shared.stop.borrow_mut() = Some(Stop::Source);
                }
                return Err(e);
            }
        };
        self.hasher.update(&buf[..n]);
        let total = self.shared.compressed.get() + n as u64;
        self.shared.compressed.set(total);
        if self.limit.is_some_and(|l| total > l) {
            *self.shared.stop.borrow_mut() = Some(Stop::OverDeclaredSize);
            return Err(io::Error::other("more bytes than declared"));
        }
        Ok(n)
    }
}

/// The inflated stream as the tar parser sees it: counts bytes (so the position of the
/// end-of-archive marker is known) and enforces the compression ratio.
struct Inflated<R> {
    inner: R,
    shared: Rc<Shared>,
    max_ratio: u64,
    grace: u64,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let inflated = self.shared.inflated.get() + n as u64;
        self.shared.inflated.set(inflated);
        let compressed = self.shared.compressed.get();
        if inflated > self.grace && inflated > compressed.saturating_mul(self.max_ratio) {
            *self.shared.stop.borrow_mut() = Some(Stop::Ratio {
                inflated,
                compressed,
            });
            return Err(io::Error::other("compression ratio over the limit"));
        }
        Ok(n)
    }
}

type Stream<R> = Inflated<BufReader<GzDecoder<BufReader<Source<R>>>>>;

/// One operation for the writer thread, in archive order.
enum Op {
    Mkdir {
        path: String,
        mode: u32,
    },
    ChmodDir {
        path: String,
        mode: u32,
    },
    Unlink {
        path: String,
    },
    /// The first (maybe only) chunk of a regular file.
    File {
        path: String,
        mode: u32,
        mtime: Option<i64>,
        data: Vec<u8>,
        last: bool,
    },
    /// A further chunk of the file opened by the last `File`.
    Chunk {
        data: Vec<u8>,
        last: bool,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// Acknowledged by a file worker once everything sent to it before is applied.
    Fence(mpsc::Sender<()>),
}

/// Where accepted entries go.
enum Sink {
    Validate,
    Write {
        tx: mpsc::SyncSender<Vec<Op>>,
        batch: Vec<Op>,
        bytes: usize,
        gone: bool,
    },
}

impl Sink {
    fn writes(&self) -> bool {
        matches!(self, Sink::Write { .. })
    }

    fn push(&mut self, op: Op) -> Result<()> {
        if let Sink::Write { batch, bytes, .. } = self {
            *bytes += match &op {
                Op::File { data, .. } | Op::Chunk { data, .. } => data.len(),
                _ => 0,
            };
            batch.push(op);
            if *bytes >= BATCH_BYTES || batch.len() >= BATCH_OPS {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Sink::Write {
            tx,
            batch,
            bytes,
            gone,
        } = self
        {
            if batch.is_empty() {
                return Ok(());
            }
            *bytes = 0;
            if tx.send(std::mem::take(batch)).is_err() {
                *gone = true;
                return Err(Error::io(
                    "extracting",
                    io::Error::other("the writer stopped"),
                ));
            }
        }
        Ok(())
    }
}

/// GNU long name/link and PAX records waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

struct Pass<'a> {
    policy: &'a ExtractPolicy,
    shared: Rc<Shared>,
    phase: ArchivePhase,
    progress: &'a mut dyn FnMut(ExtractProgress),
    summary: ExtractSummary,
    tree: Tree,
    root_mode: Option<u32>,
    metadata_records: u64,
    last_progress: (u64, u64),
    scratch: Vec<u8>,
}

fn rejected(reason: RejectReason, entry: Option<&str>, message: impl Into<String>) -> Error {
    Error::rejected(reason, entry.map(str::to_string), message)
}

fn refusal(entry: &str) -> impl FnOnce(policy::Refusal) -> Error + '_ {
    move |(reason, message)| rejected(reason, Some(entry), message)
}

fn round_up(size: u64) -> Option<u64> {
    size.checked_add(511).map(|s| s & !511)
}

fn pass<R: Read>(
    reader: R,
    sink: &mut Sink,
    expected: Option<&ArchiveDescriptor>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
    phase: ArchivePhase,
) -> Result<ExtractSummary> {
    let shared = Rc::new(Shared::default());
    let source = Source {
        inner: reader,
        hasher: Sha256::new(),
        shared: shared.clone(),
        limit: expected.map(|e| e.size_bytes),
    };
    let decoder = GzDecoder::new(BufReader::with_capacity(COMPRESSED_BUF, source));
    let stream: Stream<R> = Inflated {
        inner: BufReader::with_capacity(INFLATED_BUF, decoder),
        shared: shared.clone(),
        max_ratio: policy.max_ratio,
        grace: policy.ratio_grace_bytes,
    };
    let mut p = Pass {
        policy,
        shared,
        phase,
        progress,
        summary: ExtractSummary::default(),
        tree: Tree::new(policy),
        root_mode: None,
        metadata_records: 0,
        last_progress: (0, 0),
        scratch: Vec::new(),
    };
    let mut archive = tar::Archive::new(stream);
    let end_of_entries = p.entries(&mut archive, sink)?;
    let stream = archive.into_inner();
    p.finish(stream, end_of_entries, sink, expected)
}

impl Pass<'_> {
    /// Maps an I/O error of the reading side to the typed error it stands for.
    fn read_error(&self, e: io::Error, entry: Option<&str>) -> Error {
        match self.shared.stop.borrow_mut().take() {
            Some(Stop::Ratio {
                inflated,
                compressed,
            }) => rejected(
                RejectReason::CompressionRatio,
                entry,
                format!(
                    "{inflated} bytes inflated from {compressed} compressed bytes, over the ratio limit of {}",
                    self.policy.max_ratio
                ),
            ),
            Some(Stop::OverDeclaredSize) => rejected(
                RejectReason::SizeMismatch,
                None,
                "the archive is longer than its declared sizeBytes",
            ),
            Some(Stop::Source) => Error::io("reading the archive", e),
            None => rejected(
                RejectReason::Corrupt,
                entry,
                format!("corrupt or truncated archive: {e}"),
            ),
        }
    }

    fn tick(&mut self, force: bool) {
        let bytes = self.shared.compressed.get();
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

    /// Walks the raw entries; returns the inflated offset where the entries ended (where
    /// the end-of-archive marker must start).
    fn entries<R: Read>(&mut self, archive: &mut tar::Archive<R>, sink: &mut Sink) -> Result<u64> {
        let entries = archive
            .entries()
            .map_err(|e| self.read_error(e, None))?
            .raw(true);
        let mut pending = Pending::default();
        let mut next = 0u64;
        for item in entries {
            let mut entry = item.map_err(|e| self.read_error(e, None))?;
            let size = entry.size();
            next = round_up(size)
                .and_then(|s| entry.raw_file_position().checked_add(s))
                .ok_or_else(|| rejected(RejectReason::Corrupt, None, "entry size overflows"))?;
            let header = entry.header().clone();
            let ty = header.entry_type();
            if ty.is_gnu_longname()
                || ty.is_gnu_longlink()
                || ty.is_pax_local_extensions()
                || ty.is_pax_global_extensions()
            {
                self.metadata(&mut entry, &header, size, &mut pending)?;
                continue;
            }
            let pending = std::mem::take(&mut pending);
            self.entry(&mut entry, &header, size, pending, sink)?;
            self.tick(false);
        }
        if !pending.is_empty() {
            return Err(rejected(
                RejectReason::Corrupt,
                None,
                "a metadata record at the end of the archive describes no entry",
            ));
        }
        Ok(next)
    }

    /// A GNU long name/link or PAX record: sized before it is read.
    fn metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        header: &tar::Header,
        size: u64,
        pending: &mut Pending,
    ) -> Result<()> {
        let ty = header.entry_type();
        let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        let name = Some(name.as_str());
        self.metadata_records += 1;
        if self.metadata_records > self.policy.max_entries.saturating_mul(4) {
            return Err(rejected(
                RejectReason::TooManyEntries,
                name,
                "too many metadata records",
            ));
        }
        if size > self.policy.max_metadata_bytes {
            return Err(rejected(
                RejectReason::MetadataTooLarge,
                name,
                format!(
                    "a {} record of {size} bytes, over the limit of {}",
                    if ty.is_gnu_longname() || ty.is_gnu_longlink() {
                        "GNU long name"
                    } else {
                        "PAX"
                    },
                    self.policy.max_metadata_bytes
                ),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.read_error(e, name))?;
        if data.len() as u64 != size {
            return Err(rejected(
                RejectReason::Corrupt,
                name,
                "truncated metadata record",
            ));
        }
        let twice = || {
            rejected(
                RejectReason::Corrupt,
                name,
                "two metadata records of the same kind for one entry",
            )
        };
        if ty.is_gnu_longname() || ty.is_gnu_longlink() {
            while data.last() == Some(&0) {
                data.pop();
            }
            let slot = if ty.is_gnu_longname() {
                &mut pending.long_name
            } else {
                &mut pending.long_link
            };
            if slot.replace(data).is_some() {
                return Err(twice());
            }
            return Ok(());
        }
        let pax = policy::parse_pax(&data).map_err(|m| rejected(RejectReason::Corrupt, name, m))?;
        if ty.is_pax_global_extensions() {
            if pax.path.is_some() || pax.linkpath.is_some() || pax.size.is_some() || pax.sparse {
                return Err(rejected(
                    RejectReason::Corrupt,
                    name,
                    "a PAX global header with path, linkpath, size or sparse keys is not supported",
                ));
            }
            return Ok(());
        }
        if pending.pax.replace(pax).is_some() {
            return Err(twice());
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        header: &tar::Header,
        size: u64,
        pending: Pending,
        sink: &mut Sink,
    ) -> Result<()> {
        let Pending {
            long_name,
            long_link,
            pax,
        } = pending;
        let pax = pax.unwrap_or_default();
        let raw_path = match pax.path.or(long_name) {
            Some(p) => p,
            None => header.path_bytes().into_owned(),
        };
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        self.tree.count_entry().map_err(refusal(&name))?;
        self.summary.entries = self.tree.entries();
        let path = policy::normalize_entry_path(&raw_path, self.policy).map_err(refusal(&name))?;
        let ty = header.entry_type();
        let kind = match ty {
            _ if pax.sparse || ty.is_gnu_sparse() => {
                return Err(rejected(
                    RejectReason::SpecialFile,
                    Some(&name),
                    "sparse files are not supported",
                ));
            }
            EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            other => {
                let what = match other {
                    EntryType::Char => "a character device".to_string(),
                    EntryType::Block => "a block device".to_string(),
                    EntryType::Fifo => "a fifo".to_string(),
                    t => format!("an unsupported entry type {:?}", t.as_byte() as char),
                };
                return Err(rejected(
                    RejectReason::SpecialFile,
                    Some(&name),
                    format!("{what} is not allowed"),
                ));
            }
        };
        if pax.size.is_some_and(|s| s != size) {
            return Err(rejected(
                RejectReason::Corrupt,
                Some(&name),
                "the PAX size disagrees with the header size",
            ));
        }
        let mode = header
            .mode()
            .map_err(|e| rejected(RejectReason::Corrupt, Some(&name), format!("bad mode: {e}")))?
            & 0o777;
        if path.is_empty() {
            if kind != Kind::Dir {
                return Err(rejected(
                    RejectReason::InvalidPath,
                    Some(&name),
                    "only a directory may name the extraction root",
                ));
            }
            self.root_mode = Some(mode | 0o700);
            return Ok(());
        }
        let link_target = |link: Option<Vec<u8>>| -> Vec<u8> {
            match pax.linkpath.clone().or(link) {
                Some(l) => l,
                None => header
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            }
        };
        match kind {
            Kind::Dir => {
                let placement = self.tree.place(&path, Kind::Dir).map_err(refusal(&name))?;
                let mode = mode | 0o700;
                match placement {
                    Placement::New { implied_dirs } => {
                        self.implied(&path, implied_dirs, sink)?;
                        self.summary.dirs += 1;
                        if sink.writes() {
                            sink.push(Op::Mkdir { path, mode })?;
                        }
                    }
                    _ => {
                        if sink.writes() {
                            sink.push(Op::ChmodDir { path, mode })?;
                        }
                    }
                }
            }
            Kind::Symlink => {
                let target =
                    policy::check_symlink_target(&path, &link_target(long_link), self.policy)
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
                let target =
                    policy::normalize_hardlink_target(&link_target(long_link), self.policy)
                        .map_err(refusal(&name))?;
                if !matches!(self.tree.get(&target), Some(Kind::File | Kind::Hardlink)) {
                    return Err(rejected(
                        RejectReason::LinkEscapes,
                        Some(&name),
                        format!(
                            "hardlink target {target:?} is not an earlier regular file of the archive"
                        ),
                    ));
                }
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
                if size > self.policy.max_entry_bytes {
                    return Err(rejected(
                        RejectReason::TooManyBytes,
                        Some(&name),
                        format!(
                            "{size} bytes, over the per-entry limit of {}",
                            self.policy.max_entry_bytes
                        ),
                    ));
                }
                let total = self.summary.bytes.saturating_add(size);
                if total > self.policy.max_total_bytes {
                    return Err(rejected(
                        RejectReason::TooManyBytes,
                        Some(&name),
                        format!(
                            "more than {} extracted bytes in total",
                            self.policy.max_total_bytes
                        ),
                    ));
                }
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
                let mtime = header.mtime().ok().and_then(|m| i64::try_from(m).ok());
                self.file_data(entry, size, &name, path, mode, mtime, sink)?;
                self.summary.files += 1;
                self.summary.bytes = total;
            }
        }
        Ok(())
    }

    /// The directories `path` implies (prefixes of it, top-down), already placed in the
    /// tree.
    fn implied(&mut self, path: &str, dirs: Vec<usize>, sink: &mut Sink) -> Result<()> {
        self.summary.entries = self.tree.entries();
        for end in dirs {
            self.summary.dirs += 1;
            if sink.writes() {
                sink.push(Op::Mkdir {
                    path: path[..end].to_string(),
                    mode: IMPLIED_DIR_MODE,
                })?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn file_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
        name: &str,
        path: String,
        mode: u32,
        mtime: Option<i64>,
        sink: &mut Sink,
    ) -> Result<()> {
        let truncated = || {
            rejected(
                RejectReason::Corrupt,
                Some(name),
                "the archive ends inside this entry",
            )
        };
        if !sink.writes() {
            if self.scratch.is_empty() {
                self.scratch = vec![0; INFLATED_BUF];
            }
            let mut left = size;
            while left > 0 {
                let want = left.min(self.scratch.len() as u64) as usize;
                let n = entry
                    .read(&mut self.scratch[..want])
                    .map_err(|e| self.read_error(e, Some(name)))?;
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
        let mut left = size;
        let mut first = Some(path);
        loop {
            let want = left.min(CHUNK);
            let mut data = Vec::with_capacity(want as usize);
            (&mut *entry)
                .take(want)
                .read_to_end(&mut data)
                .map_err(|e| self.read_error(e, Some(name)))?;
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
        sink: &mut Sink,
        expected: Option<&ArchiveDescriptor>,
    ) -> Result<ExtractSummary> {
        if self.shared.inflated.get() == end_of_entries {
            return Err(rejected(
                RejectReason::Corrupt,
                None,
                "truncated archive: the tar end-of-archive marker is missing",
            ));
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; INFLATED_BUF];
        }
        let mut padding = 0u64;
        loop {
            let n = stream
                .read(&mut self.scratch)
                .map_err(|e| self.read_error(e, None))?;
            if n == 0 {
                break;
            }
            if self.scratch[..n].iter().any(|b| *b != 0) {
                return Err(rejected(
                    RejectReason::TrailingData,
                    None,
                    "data after the tar end-of-archive marker",
                ));
            }
            padding += n as u64;
            if padding > MAX_PADDING {
                return Err(rejected(
                    RejectReason::TrailingData,
                    None,
                    format!(
                        "more than {MAX_PADDING} bytes of padding after the tar end-of-archive marker"
                    ),
                ));
            }
        }
        let mut compressed = stream.inner.into_inner().into_inner();
        let rest = compressed
            .fill_buf()
            .map_err(|e| Error::io("reading the archive", e))?;
        if !rest.is_empty() {
            return Err(match self.shared.stop.borrow_mut().take() {
                Some(Stop::OverDeclaredSize) => rejected(
                    RejectReason::SizeMismatch,
                    None,
                    "the archive is longer than its declared sizeBytes",
                ),
                _ => rejected(
                    RejectReason::TrailingData,
                    None,
                    "bytes follow the end of the gzip stream",
                ),
            });
        }
        let source = compressed.into_inner();
        let digest: [u8; 32] = source.hasher.finalize().into();
        self.summary.compressed_bytes = self.shared.compressed.get();
        self.summary.sha256 = digest;
        if let Some(expected) = expected {
            if self.summary.compressed_bytes != expected.size_bytes {
                return Err(rejected(
                    RejectReason::SizeMismatch,
                    None,
                    format!(
                        "received {} bytes, declared {}",
                        self.summary.compressed_bytes, expected.size_bytes
                    ),
                ));
            }
            if hex::encode(digest) != expected.sha256.as_str() {
                return Err(rejected(
                    RejectReason::DigestMismatch,
                    None,
                    format!(
                        "sha256 is {}, declared {}",
                        hex::encode(digest),
                        expected.sha256
                    ),
                ));
            }
        }
        if sink.writes() {
            sink.push(Op::ChmodDir {
                path: String::new(),
                mode: self.root_mode.unwrap_or(ROOT_MODE),
            })?;
            sink.flush()?;
        }
        self.tick(true);
        Ok(self.summary)
    }
}

/// The writer thread: applies operations in archive order until the channel closes.
///
/// With more than one core, regular files (and symlinks, and the unlinking of a file about
/// to be replaced) are handed to [`file_workers`] threads, chosen by the entry's parent
/// directory, so that entries of one directory stay in order on one thread while different
/// directories are written in parallel. This thread keeps what orders the rest: it creates
/// directories itself, before any later entry inside them is dispatched, and it waits for
/// the lane of a hardlink's target (a fence) before making the hardlink. A failing lane sets
/// `cancel`, which stops the other lanes and the dispatcher (and so the reader). Every
/// thread writes through its own [`ConfinedDir`] on the same root, so confinement is the
/// same as with one thread.
///
/// Why: file creation can be bound by the kernel rather than by the bytes (journal-less
/// ext4 re-reads the inode table for each recently freed inode on every create, for 60 to
/// 360 s after a deletion: see `docs/archive.md`), and creates in one directory serialize.
fn write_ops(dir: ConfinedDir, rx: mpsc::Receiver<Vec<Op>>, cancel: &AtomicBool) -> Result<()> {
    let workers = file_workers();
    if workers < 2 {
        return write_serial(dir, rx, cancel);
    }
    // The writer thread is itself one of the `workers` lanes (the last); it spawns the rest.
    let mut clones = Vec::with_capacity(workers - 1);
    for _ in 1..workers {
        clones.push(
            dir.try_clone()
                .map_err(|e| Error::io("opening the extraction root", e))?,
        );
    }
    std::thread::scope(|s| {
        let mut lanes = Vec::with_capacity(workers - 1);
        let mut handles = Vec::with_capacity(workers - 1);
        for d in clones {
            let (tx, rx) = mpsc::sync_channel::<Vec<Op>>(LANE_BATCHES);
            handles.push(s.spawn(move || {
                let r = write_serial(d, rx, cancel);
                if r.is_err() {
                    // Stop the other lanes and, through the dispatcher, the reader.
                    cancel.store(true, Ordering::Relaxed);
                }
                r
            }));
            lanes.push(Lane {
                tx,
                batch: Vec::new(),
                bytes: 0,
            });
        }
        let dispatched = dispatch(dir, rx, cancel, &mut lanes);
        if dispatched.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        drop(lanes);
        let mut first_worker_error = None;
        for h in handles {
            let r = match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            if let Err(e) = r {
                first_worker_error.get_or_insert(e);
            }
        }
        match (dispatched, first_worker_error) {
            // The writer thread's own failure stopped everything.
            (Err(Dispatch::Failed(e)), _) => Err(e),
            // A worker's error explains why its lane closed, or why the writer stopped.
            (Err(Dispatch::LaneClosed) | Ok(()), Some(w)) => Err(w),
            (Err(Dispatch::LaneClosed), None) => Err(lane_closed()),
            (Ok(()), None) => Ok(()),
        }
    })
}

/// File writer lanes, the writer thread included: one per core, at most 4; fewer than 2
/// means the writer thread writes everything itself.
fn file_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Batches in flight to each file worker (bounds memory to ~10 MiB per extra lane).
const LANE_BATCHES: usize = 4;

/// Why the dispatcher stopped.
enum Dispatch {
    /// A worker's queue closed: the worker stopped (its own result says why).
    LaneClosed,
    /// The writer thread's own operation failed.
    Failed(Error),
}

impl From<Error> for Dispatch {
    fn from(e: Error) -> Self {
        Dispatch::Failed(e)
    }
}

fn lane_closed() -> Error {
    Error::io("extracting", io::Error::other("a file writer stopped"))
}

/// A file worker's queue, filled in batches.
struct Lane {
    tx: mpsc::SyncSender<Vec<Op>>,
    batch: Vec<Op>,
    bytes: usize,
}

impl Lane {
    fn push(&mut self, op: Op) -> std::result::Result<(), Dispatch> {
        self.bytes += match &op {
            Op::File { data, .. } | Op::Chunk { data, .. } => data.len(),
            _ => 0,
        };
        self.batch.push(op);
        if self.bytes >= BATCH_BYTES || self.batch.len() >= BATCH_OPS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), Dispatch> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.tx
            .send(std::mem::take(&mut self.batch))
            .map_err(|_| Dispatch::LaneClosed)
    }

    /// Waits until this lane's worker has applied everything sent to it so far.
    fn fence(&mut self) -> std::result::Result<(), Dispatch> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.batch.push(Op::Fence(ack_tx));
        self.flush()?;
        ack_rx.recv().map_err(|_| Dispatch::LaneClosed)
    }
}

fn lane_of(path: &str, lanes: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// The dispatcher's side of [`write_ops`]: entries of the last lane are applied here, in
/// order, the others go to their worker.
fn dispatch(
    mut dir: ConfinedDir,
    rx: mpsc::Receiver<Vec<Op>>,
    cancel: &AtomicBool,
    lanes: &mut [Lane],
) -> std::result::Result<(), Dispatch> {
    let n = lanes.len() + 1;
    let own = lanes.len();
    // The lane of a file whose further chunks are still to come.
    let mut open_file: Option<usize> = None;
    // The file this thread is writing (of its own lane).
    let mut current = None;
    for batch in rx {
        if cancel.load(Ordering::Relaxed) {
            // A worker failed (its result says why) or the reader stopped.
            return Err(Dispatch::LaneClosed);
        }
        for op in batch {
            let lane = match &op {
                Op::File { path, last, .. } => {
                    let lane = lane_of(path, n);
                    open_file = (!last).then_some(lane);
                    lane
                }
                Op::Chunk { last, .. } => {
                    let lane = open_file.ok_or_else(|| {
                        Dispatch::Failed(Error::io(
                            "extracting",
                            io::Error::other("chunk without a file"),
                        ))
                    })?;
                    if *last {
                        open_file = None;
                    }
                    lane
                }
                Op::Symlink { path, .. } | Op::Unlink { path } => lane_of(path, n),
                // Directories are made here, before anything inside them is dispatched. A
                // mode change keeps the owner's rwx (`| 0o700`), so lanes still writing
                // inside need no fence.
                Op::Mkdir { .. } | Op::ChmodDir { .. } | Op::Fence(_) => own,
                // The target (an earlier regular file) may still be in flight on its lane.
                Op::Hardlink { target, .. } => {
                    let target_lane = lane_of(target, n);
                    if target_lane != own {
                        lanes[target_lane].fence()?;
                    }
                    own
                }
            };
            if lane == own {
                apply(&mut dir, op, &mut current)?;
            } else {
                lanes[lane].push(op)?;
            }
        }
    }
    for lane in lanes.iter_mut() {
        lane.flush()?;
    }
    Ok(())
}

/// Applies operations in order on one thread until the channel closes.
fn write_serial(
    mut dir: ConfinedDir,
    rx: mpsc::Receiver<Vec<Op>>,
    cancel: &AtomicBool,
) -> Result<()> {
    let mut current: Option<(File, String, Option<i64>)> = None;
    for batch in rx {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        for op in batch {
            apply(&mut dir, op, &mut current)?;
        }
    }
    Ok(())
}

fn apply(
    dir: &mut ConfinedDir,
    op: Op,
    current: &mut Option<(File, String, Option<i64>)>,
) -> Result<()> {
    match op {
        Op::Mkdir { path, mode } => dir.mkdir(&path, mode).map_err(|e| write_error(&path, e)),
        Op::ChmodDir { path, mode } => dir
            .chmod_dir(&path, mode)
            .map_err(|e| write_error(&path, e)),
        Op::Unlink { path } => dir.unlink(&path).map_err(|e| write_error(&path, e)),
        Op::Symlink { path, target } => dir
            .symlink(&path, &target)
            .map_err(|e| write_error(&path, e)),
        Op::Hardlink { path, target } => dir
            .hardlink(&target, &path)
            .map_err(|e| write_error(&path, e)),
        Op::Fence(ack) => {
            let _ = ack.send(());
            Ok(())
        }
        Op::File {
            path,
            mode,
            mtime,
            data,
            last,
        } => {
            let mut file = dir
                .create_file(&path, mode)
                .map_err(|e| write_error(&path, e))?;
            file.write_all(&data).map_err(|e| write_error(&path, e))?;
            if last {
                finish_file(&file, &path, mtime)
            } else {
                *current = Some((file, path, mtime));
                Ok(())
            }
        }
        Op::Chunk { data, last } => {
            let Some((file, path, mtime)) = current.as_mut() else {
                return Err(Error::io(
                    "extracting",
                    io::Error::other("chunk without a file"),
                ));
            };
            file.write_all(&data).map_err(|e| write_error(path, e))?;
            if last {
                let (file, path, mtime) = (current.take()).ok_or_else(|| {
                    Error::io("extracting", io::Error::other("chunk without a file"))
                })?;
                finish_file(&file, &path, mtime)
            } else {
                let _ = mtime;
                Ok(())
            }
        }
    }
}

fn finish_file(file: &File, path: &str, mtime: Option<i64>) -> Result<()> {
    if let Some(mtime) = mtime {
        set_mtime(file, mtime).map_err(|e| write_error(path, e))?;
    }
    Ok(())
}

fn write_error(path: &str, e: io::Error) -> Error {
    // The kernel refused to resolve through a symlink or out of the root: the lexical policy
    // should have caught it first, but the confined handle is the last word.
    match e.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::LOOP.raw_os_error()
                || code == rustix::io::Errno::XDEV.raw_os_error() =>
        {
            rejected(
                RejectReason::ThroughSymlink,
                Some(path),
                format!("the confined directory handle refused the path: {e}"),
            )
        }
        _ => Error::io(format!("extracting {path:?}"), e),
    }
}

/// The private staging directory next to `dest`; removed on drop unless committed.
struct Staging {
    path: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(dest: &Path) -> Result<Self> {
        let context = || format!("extracting into {}", dest.display());
        if dest.symlink_metadata().is_ok() {
            return Err(Error::io(
                context(),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the destination already exists",
                ),
            ));
        }
        if dest.file_name().is_none() {
            return Err(Error::io(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the destination has no file name",
                ),
            ));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut last = None;
        for _ in 0..16 {
            let path = parent.join(format!(".crownest-staging-{:016x}", rand::random::<u64>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(Self {
                        path,
                        dest: dest.to_path_buf(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::io(context(), e)),
            }
        }
        Err(Error::io(
            context(),
            last.unwrap_or_else(|| io::Error::other("no staging name")),
        ))
    }

    fn open(&self) -> Result<OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("opening the staging directory", e.into()))
    }

    /// Moves the staging directory to `dest`, never replacing anything there.
    fn commit(mut self) -> Result<()> {
        use rustix::fs::{CWD, RenameFlags};
        let context = || format!("moving the extracted tree to {}", self.dest.display());
        match rustix::fs::renameat_with(CWD, &self.path, CWD, &self.dest, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // The filesystem cannot do RENAME_NOREPLACE: check, then rename.
                if self.dest.symlink_metadata().is_ok() {
                    return Err(Error::io(
                        context(),
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "the destination already exists",
                        ),
                    ));
                }
                std::fs::rename(&self.path, &self.dest).map_err(|e| Error::io(context(), e))?;
            }
            Err(e) => return Err(Error::io(context(), e.into())),
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the staging directory");
        }
    }
}
