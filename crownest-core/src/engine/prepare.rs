//! The one pass over an upload (`docs/archive.md`, "One pass"): the bytes stream into the
//! store, which counts and hashes them (the only hash), and the same chunks go to the
//! extractor on a blocking thread, which inflates them once, checks every entry against the
//! extraction policy and, when the run's backend has a [`prepare_root`], writes the tree
//! there. `start` then moves that tree into the sandbox. A refusal on either side stops
//! both; a tree whose bytes turn out not to be the declared archive is discarded.
//!
//! [`prepare_root`]: crate::SandboxBackend::prepare_root

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf as _, Bytes};
use futures::StreamExt as _;
use tokio::sync::mpsc;

use super::{WorkspaceRuns, lock};
use crate::archive::{self, ExtractPolicy, ExtractSummary};
use crate::error::{Error, Result};
use crate::hostdir::{Marker, PreparedTree, WorkRoot};
use crate::ids::RunId;
use crate::store::ByteStream;

/// Chunks in flight between the store's side and the extractor's.
pub(super) const TEE_DEPTH: usize = 8;

/// What the extractor reports while it reads: entries so far.
#[derive(Debug, Default)]
pub(super) struct CheckProgress {
    pub(super) entries: AtomicU64,
    pub(super) bytes: AtomicU64,
}

/// Why the store's side of a tee ended early: the extractor stopped reading (it refused
/// the archive, or failed), so its error is the one to report.
#[derive(Debug, Default)]
pub(super) struct TeeState {
    check_stopped: AtomicBool,
}

impl TeeState {
    pub(super) fn check_stopped(&self) -> bool {
        self.check_stopped.load(Ordering::SeqCst)
    }
}

/// Feeds every chunk of `data` to `tx` (waiting when the extractor is behind) before
/// passing it on. The channel closes when `data` ends or fails, so the extractor sees the
/// end; when the extractor has stopped, the stream fails at once.
pub(super) fn tee(data: ByteStream, tx: mpsc::Sender<Bytes>, state: Arc<TeeState>) -> ByteStream {
    futures::stream::unfold(
        (data, Some(tx), state),
        |(mut data, tx, state)| async move {
            match data.next().await? {
                Ok(chunk) => {
                    if let Some(sender) = &tx
                        && sender.send(chunk.clone()).await.is_err()
                    {
                        state.check_stopped.store(true, Ordering::SeqCst);
                        let e = io::Error::other("the archive check stopped reading");
                        return Some((Err(e), (data, None, state)));
                    }
                    Some((Ok(chunk), (data, tx, state)))
                }
                Err(e) => Some((Err(e), (data, None, state))),
            }
        },
    )
    .boxed()
}

/// The extractor's side of a [`tee`]: a blocking reader of the chunks.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Where to put a checked tree: the backend's work root and the marker it carries, and the
/// tree's place under `max_prepared_trees`.
pub(super) struct PrepareAt {
    pub(super) root: WorkRoot,
    pub(super) marker: Marker,
    pub(super) slot: Slot,
}

/// One of the `max_prepared_trees` places, held from the start of an upload until its tree
/// is kept (then the tree counts) or given up.
#[derive(Debug)]
pub(super) struct Slot {
    reserved: Arc<AtomicU64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.reserved.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A tree with the place it holds.
pub(super) type Held = (PreparedTree, Slot);

/// The outcome of the extractor's side: the summary, and the tree when one was prepared.
pub(super) type Checked = (ExtractSummary, Option<Held>);

/// Checks (and, with `at`, extracts) an archive read from `reader` on a blocking thread,
/// without hashing it: the caller checks the digest on the same bytes (the store), or they
/// come from the store (content-addressed, checked when stored).
pub(super) async fn check(
    reader: impl Read + Send + 'static,
    size_hint: Option<u64>,
    policy: ExtractPolicy,
    at: Option<PrepareAt>,
    progress: Arc<CheckProgress>,
) -> Result<Checked> {
    let task = tokio::task::spawn_blocking(move || {
        let mut report = |p: archive::ExtractProgress| {
            progress.entries.store(p.entries, Ordering::Relaxed);
            progress.bytes.store(p.bytes_done, Ordering::Relaxed);
        };
        match at {
            Some(at) => {
                let tree = PreparedTree::extract(
                    &at.root,
                    &at.marker,
                    reader,
                    size_hint,
                    &policy,
                    &mut report,
                )?;
                Ok((tree.summary(), Some((tree, at.slot))))
            }
            None => archive::validate_unhashed(reader, size_hint, &policy, &mut report)
                .map(|s| (s, None)),
        }
    });
    task.await.map_err(|e| {
        Error::io(
            "archive check task",
            io::Error::other(format!("the task failed: {e}")),
        )
    })?
}

/// Trees prepared at upload, per run, until the run starts or ends.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    trees: Mutex<HashMap<RunId, PreparedTree>>,
    /// Uploads preparing a tree now.
    reserved: Arc<AtomicU64>,
}

impl WorkspaceRuns {
    /// Where an upload for a run on `backend` prepares its tree: `None` when that backend
    /// takes none, or when `max_prepared_trees` are kept or being made already.
    pub(super) fn prepare_at(&self, id: &RunId, backend: &str) -> Option<PrepareAt> {
        let b = self.inner.backends.get(backend)?;
        let root = b.prepare_root()?;
        let prepared = &self.inner.prepared;
        let max = self.inner.config.max_prepared_trees as u64;
        let kept = lock(&prepared.trees).len() as u64;
        let reserved = prepared.reserved.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            reserved: prepared.reserved.clone(),
        };
        if kept + reserved >= max {
            return None;
        }
        let marker = Marker::new(b.name(), id, &self.inner.instance, self.inner.owner.clone());
        Some(PrepareAt { root, marker, slot })
    }

    /// Keeps the run's tree for `start` (replacing none: a run takes one archive); its
    /// slot is released once the map holds it.
    pub(super) fn keep_prepared(&self, id: &RunId, held: Held) {
        let (tree, slot) = held;
        let old = lock(&self.inner.prepared.trees).insert(id.clone(), tree);
        drop(slot);
        if let Some(old) = old {
            tokio::spawn(old.discard());
        }
    }

    /// The run's prepared tree, taken (for its driver).
    pub(super) fn take_prepared(&self, id: &RunId) -> Option<PreparedTree> {
        lock(&self.inner.prepared.trees).remove(id)
    }

    /// Removes the run's prepared tree, if any (the run ended without using it).
    pub(super) async fn discard_prepared(&self, id: &RunId) {
        let tree = self.take_prepared(id);
        if let Some(tree) = tree {
            tree.discard().await;
        }
    }

    /// How many prepared trees wait for their run to start (for tests and `doctor`).
    pub fn prepared_trees(&self) -> usize {
        lock(&self.inner.prepared.trees).len()
    }
}
