//! The writing side of an extraction: the accepted entries, as [`Op`]s in archive order,
//! cross a bounded channel (in batches, through one [`Batcher`]) to a writer thread that
//! applies them through a [`ConfinedDir`], sharing the file writes with helper lanes.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::confined::{ConfinedDir, set_mtime};
use super::policy;
use crate::error::{Error, Result};

/// File data is handed to the writer in chunks of at most this size.
pub(super) const CHUNK: u64 = 1 << 20;
/// A batch of operations is sent once it holds this many bytes of data or operations.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_OPS: usize = 512;
/// Batches in flight between the reader and the writer (bounds memory to ~10 MiB).
const CHANNEL_BATCHES: usize = 8;
/// Batches in flight to each file lane (bounds memory to ~10 MiB per extra lane).
const LANE_BATCHES: usize = 4;

/// One operation for the writer thread, in archive order.
pub(super) enum Op {
    /// A new directory.
    Mkdir { path: String, mode: u32 },
    /// A new mode for an existing directory (the root's is `""`).
    ChmodDir { path: String, mode: u32 },
    /// The unlinking of a regular file about to be replaced.
    Unlink { path: String },
    /// The first (maybe only) chunk of a regular file.
    File {
        path: String,
        mode: u32,
        mtime: Option<i64>,
        data: Vec<u8>,
        last: bool,
    },
    /// A further chunk of the file opened by the last `File`.
    Chunk { data: Vec<u8>, last: bool },
    /// A symlink.
    Symlink { path: String, target: String },
    /// A hardlink to an earlier regular file.
    Hardlink { path: String, target: String },
    /// Acknowledged by a lane once everything sent to it before is applied.
    Fence(mpsc::Sender<()>),
}

/// The receiving thread of a [`Batcher`] has stopped.
struct Closed;

/// Operations for one receiving thread, sent in batches of at most [`BATCH_BYTES`] bytes
/// of data or [`BATCH_OPS`] operations.
struct Batcher {
    tx: mpsc::SyncSender<Vec<Op>>,
    batch: Vec<Op>,
    bytes: usize,
}

impl Batcher {
    fn new(tx: mpsc::SyncSender<Vec<Op>>) -> Self {
        Self {
            tx,
            batch: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, op: Op) -> std::result::Result<(), Closed> {
        self.bytes += op.data_len();
        self.batch.push(op);
        if self.bytes >= BATCH_BYTES || self.batch.len() >= BATCH_OPS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), Closed> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.tx
            .send(std::mem::take(&mut self.batch))
            .map_err(|_| Closed)
    }

    /// Waits until the receiver has applied everything sent to it so far.
    fn fence(&mut self) -> std::result::Result<(), Closed> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.batch.push(Op::Fence(ack_tx));
        self.flush()?;
        ack_rx.recv().map_err(|_| Closed)
    }
}

/// Where the pass sends accepted entries: nowhere (`validate`), or to the writer thread of
/// [`write_through`], which starts only once the entries fill a first batch: a small
/// archive (the common tiny run: fewer than [`BATCH_OPS`] entries and [`BATCH_BYTES`] of
/// data) is written on the reading thread at the end of the pass, without the writer and
/// lane threads, their channels and the CPU-count lookup, which cost more than its writes.
pub(super) struct Sink<'s> {
    to: To<'s>,
    /// The writer thread stopped taking operations.
    gone: bool,
}

/// Starts the writer thread and returns the sending end of its channel.
type Start<'s> = Box<dyn FnOnce() -> mpsc::SyncSender<Vec<Op>> + 's>;

enum To<'s> {
    /// `validate`: operations are not even built.
    Nowhere,
    /// Nothing sent yet: the operations wait here for a first full batch.
    Held {
        batch: Vec<Op>,
        bytes: usize,
        start: Start<'s>,
    },
    /// The writer thread runs.
    Writer(Batcher),
}

impl Sink<'_> {
    /// The sink of `validate`: operations are not even built.
    pub(super) fn validate() -> Self {
        Self {
            to: To::Nowhere,
            gone: false,
        }
    }

    /// Whether operations are wanted (else the pass need not build them).
    pub(super) fn writes(&self) -> bool {
        !matches!(self.to, To::Nowhere)
    }

    /// Queues `op` for the writer (starting it once a first batch is full).
    pub(super) fn push(&mut self, op: Op) -> Result<()> {
        let pushed = match &mut self.to {
            To::Nowhere => Ok(()),
            To::Writer(batcher) => batcher.push(op),
            To::Held { batch, bytes, .. } => {
                *bytes += op.data_len();
                batch.push(op);
                if *bytes < BATCH_BYTES && batch.len() < BATCH_OPS {
                    return Ok(());
                }
                self.start_writer()
            }
        };
        pushed.map_err(|Closed| writer_stopped(&mut self.gone))
    }

    /// Sends what is queued (held operations stay held: [`write_through`] writes them).
    pub(super) fn flush(&mut self) -> Result<()> {
        if let To::Writer(batcher) = &mut self.to {
            batcher
                .flush()
                .map_err(|Closed| writer_stopped(&mut self.gone))?;
        }
        Ok(())
    }

    /// Starts the writer thread with what is held.
    fn start_writer(&mut self) -> std::result::Result<(), Closed> {
        let To::Held { batch, start, .. } = std::mem::replace(&mut self.to, To::Nowhere) else {
            return Ok(());
        };
        let mut batcher = Batcher::new(start());
        batcher.batch = batch;
        let sent = batcher.flush();
        self.to = To::Writer(batcher);
        sent
    }

    /// The operations never sent (the writer thread did not start).
    fn into_held(self) -> Option<Vec<Op>> {
        match self.to {
            To::Held { batch, .. } => Some(batch),
            To::Nowhere | To::Writer(_) => None,
        }
    }
}

impl Op {
    /// The bytes of file data it carries.
    fn data_len(&self) -> usize {
        match self {
            Op::File { data, .. } | Op::Chunk { data, .. } => data.len(),
            _ => 0,
        }
    }
}

fn writer_stopped(gone: &mut bool) -> Error {
    *gone = true;
    Error::io("extracting", io::Error::other("the writer stopped"))
}

/// Runs `read` on this thread with a [`Sink`] whose operations are applied inside `root`:
/// by a writer thread once they fill a first batch, else on this thread after `read`. A
/// failed read stops the writer at its next batch (and writes nothing held); a failed
/// writer stops the read at its next batch, and its error is the one reported.
pub(super) fn write_through<T>(
    root: OwnedFd,
    read: impl FnOnce(&mut Sink<'_>) -> Result<T>,
) -> Result<T> {
    let cancel = AtomicBool::new(false);
    let root = std::cell::Cell::new(Some(root));
    std::thread::scope(|s| {
        let cancel = &cancel;
        let root = &root;
        let writer = std::cell::OnceCell::new();
        let start: Start<'_> = Box::new(|| {
            let (tx, rx) = mpsc::sync_channel::<Vec<Op>>(CHANNEL_BATCHES);
            let dir = root.take().map(ConfinedDir::new);
            let _ = writer.set(s.spawn(move || match dir {
                Some(dir) => write_ops(dir, rx, cancel),
                None => Err(lane_closed()),
            }));
            tx
        });
        let mut sink = Sink {
            to: To::Held {
                batch: Vec::new(),
                bytes: 0,
                start,
            },
            gone: false,
        };
        let read = read(&mut sink);
        if read.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let gone = sink.gone;
        let held = sink.into_held();
        let written = match (writer.into_inner(), held, root.take()) {
            (Some(handle), _, _) => match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            // A refused archive writes nothing more.
            (None, Some(_), _) if read.is_err() => Ok(()),
            (None, Some(ops), Some(root)) => write_held(ConfinedDir::new(root), ops),
            (None, _, _) => Ok(()),
        };
        match (read, written) {
            (Err(_), Err(w)) if gone => Err(w),
            (Err(r), _) => Err(r),
            (Ok(_), Err(w)) => Err(w),
            (Ok(value), Ok(())) => Ok(value),
        }
    })
}

/// Applies the operations of a pass that never filled a batch, in order, on this thread.
fn write_held(mut dir: ConfinedDir, ops: Vec<Op>) -> Result<()> {
    let mut current = None;
    for op in ops {
        apply(&mut dir, op, &mut current)?;
    }
    Ok(())
}

/// The writer thread: applies operations in archive order until the channel closes.
///
/// With more than one core, regular files (and symlinks, and the unlinking of a file about
/// to be replaced) are handed to [`file_lanes`] threads, chosen by the entry's parent
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
    let lanes = file_lanes();
    if lanes < 2 {
        return write_serial(dir, rx, cancel);
    }
    // The writer thread is itself one of the lanes (the last); it spawns the rest.
    let mut clones = Vec::with_capacity(lanes - 1);
    for _ in 1..lanes {
        clones.push(
            dir.try_clone()
                .map_err(|e| Error::io("opening the extraction root", e))?,
        );
    }
    std::thread::scope(|s| {
        let mut batchers = Vec::with_capacity(lanes - 1);
        let mut handles = Vec::with_capacity(lanes - 1);
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
            batchers.push(Batcher::new(tx));
        }
        let dispatched = dispatch(dir, rx, cancel, &mut batchers);
        if dispatched.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        drop(batchers);
        let mut first_lane_error = None;
        for h in handles {
            let r = match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            if let Err(e) = r {
                first_lane_error.get_or_insert(e);
            }
        }
        match (dispatched, first_lane_error) {
            // The writer thread's own failure stopped everything.
            (Err(Dispatch::Failed(e)), _) => Err(e),
            // A lane's error explains why its queue closed, or why the writer stopped.
            (Err(Dispatch::LaneClosed) | Ok(()), Some(w)) => Err(w),
            (Err(Dispatch::LaneClosed), None) => Err(lane_closed()),
            (Ok(()), None) => Ok(()),
        }
    })
}

/// File writer lanes, the writer thread included: one per core, at most 4; fewer than 2
/// means the writer thread writes everything itself.
fn file_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Why the dispatcher stopped.
enum Dispatch {
    /// A lane's queue closed: the lane stopped (its own result says why).
    LaneClosed,
    /// The writer thread's own operation failed.
    Failed(Error),
}

impl From<Error> for Dispatch {
    fn from(e: Error) -> Self {
        Dispatch::Failed(e)
    }
}

impl From<Closed> for Dispatch {
    fn from(_: Closed) -> Self {
        Dispatch::LaneClosed
    }
}

fn lane_closed() -> Error {
    Error::io("extracting", io::Error::other("a file writer stopped"))
}

/// The lane of an entry at `path`: that of its parent directory.
fn lane_of(path: &str, lanes: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// The dispatcher's side of [`write_ops`]: entries of the last lane are applied here, in
/// order, the others go to their lane.
fn dispatch(
    mut dir: ConfinedDir,
    rx: mpsc::Receiver<Vec<Op>>,
    cancel: &AtomicBool,
    lanes: &mut [Batcher],
) -> std::result::Result<(), Dispatch> {
    let n = lanes.len() + 1;
    let own = lanes.len();
    // The lane of a file whose further chunks are still to come.
    let mut open_file: Option<usize> = None;
    // The file this thread is writing (of its own lane).
    let mut current = None;
    for batch in rx {
        if cancel.load(Ordering::Relaxed) {
            // A lane failed (its result says why) or the reader stopped.
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
                    let lane = open_file.ok_or_else(|| Dispatch::Failed(chunk_without_file()))?;
                    if *last {
                        open_file = None;
                    }
                    lane
                }
                Op::Symlink { path, .. } | Op::Unlink { path } => lane_of(path, n),
                // Directories are made here, before anything inside them is dispatched. A
                // mode change keeps the owner's rwx (`policy::dir_mode`), so lanes still
                // writing inside need no fence.
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
    let mut current = None;
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

/// A regular file being written chunk by chunk: the file, its path and its mtime.
type OpenFile = (File, String, Option<i64>);

fn apply(dir: &mut ConfinedDir, op: Op, current: &mut Option<OpenFile>) -> Result<()> {
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
            let Some((file, path, _)) = current.as_mut() else {
                return Err(chunk_without_file());
            };
            file.write_all(&data).map_err(|e| write_error(path, e))?;
            if last {
                let (file, path, mtime) = current.take().ok_or_else(chunk_without_file)?;
                finish_file(&file, &path, mtime)
            } else {
                Ok(())
            }
        }
    }
}

fn chunk_without_file() -> Error {
    Error::io("extracting", io::Error::other("chunk without a file"))
}

fn finish_file(file: &File, path: &str, mtime: Option<i64>) -> Result<()> {
    if let Some(mtime) = mtime {
        set_mtime(file, mtime).map_err(|e| write_error(path, e))?;
    }
    Ok(())
}

/// A write error at `path`: the kernel's refusal of a path, or a plain I/O error.
fn write_error(path: &str, e: io::Error) -> Error {
    match policy::kernel_refusal(&e) {
        Some(refusal) => policy::rejection(refusal, Some(path)),
        None => Error::io(format!("extracting {path:?}"), e),
    }
}
