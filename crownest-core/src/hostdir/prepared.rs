//! A run's tree prepared at upload: the one-pass path (`docs/archive.md`, "One pass").
//!
//! While an upload streams in, the engine checks the archive against the extraction policy
//! *and* writes the tree into a marked directory on the backend's private work root
//! ([`PreparedTree::extract`]). `start` then moves that tree into the sandbox
//! ([`PreparedTree::move_into`], one `renameat`) instead of reading, inflating and writing
//! the archive a second time. The tree is never visible to a command before its upload was
//! verified (size and sha256, checked by the store on the same bytes): it lives outside any
//! sandbox until then, and a refused upload removes it.
//!
//! A prepared tree is a [`SandboxDir`] with the run's marker (backend, run, engine, owner
//! process), so the one orphan rule applies: the owner removes it when the run ends
//! without starting, and a sweep removes it once its owner process is gone.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

use super::remove::remove_via_tombstone;
use super::root::WorkRoot;
use super::sandbox::{Marker, SandboxDir};
use crate::archive::{self, ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::error::{Error, Result};

/// The subdirectory of a prepared tree's directory that holds the tree.
const TREE: &str = "workspace";

/// How long [`PreparedTree::discard`] waits for the deletion before leaving it to the
/// background.
const DISCARD_WAIT: Duration = Duration::from_secs(10);

/// An archive's tree, checked against the extraction policy and written at upload, waiting
/// for its run to start.
#[derive(Debug)]
pub struct PreparedTree {
    /// `None` once moved away or discarded; a tree dropped with it still set is removed
    /// in the background (an upload abandoned half-way must not leave a tree behind).
    dir: Option<SandboxDir>,
    summary: ExtractSummary,
}

impl PreparedTree {
    /// Creates a marked directory for `marker`'s run under `root` and extracts `reader` into
    /// it with [`archive::extract_unhashed`] (blocking; `size_hint` sizes its buffers). The
    /// caller checks the bytes' size and digest on another reader of the same bytes and
    /// [`discard`](Self::discard)s the tree when that check fails. On an error nothing is
    /// left.
    pub fn extract(
        root: &WorkRoot,
        marker: &Marker,
        reader: impl Read,
        size_hint: Option<u64>,
        policy: &ExtractPolicy,
        progress: &mut dyn FnMut(ExtractProgress),
    ) -> Result<Self> {
        let dir = SandboxDir::create(root, marker, |_| Ok(()))?;
        let dest = dir.proc_path().join(TREE);
        match archive::extract_unhashed(reader, &dest, size_hint, policy, progress) {
            Ok(summary) => Ok(Self {
                dir: Some(dir),
                summary,
            }),
            Err(e) => {
                // Here, on this (blocking) thread: nothing is left when the error returns.
                remove_now(&dir);
                Err(e)
            }
        }
    }

    /// What the archive held (its `sha256` is all zeros: the store checked the digest).
    pub fn summary(&self) -> ExtractSummary {
        self.summary
    }

    /// The tree, as `/proc/self/fd/<n>/workspace` (valid in this process only): for a
    /// backend that copies it elsewhere (the Docker backend streams it into the container).
    pub fn tree_path(&self) -> PathBuf {
        self.dir().proc_path().join(TREE)
    }

    /// Where the tree is on the host (for messages).
    pub fn host_path(&self) -> PathBuf {
        self.dir().host_path().join(TREE)
    }

    fn dir(&self) -> &SandboxDir {
        match &self.dir {
            Some(dir) => dir,
            // Only `move_into`, `discard` and `drop` take it, and they consume the tree.
            None => unreachable!("a prepared tree is used after it was consumed"),
        }
    }

    /// Moves the tree to `dest`'s subdirectory `sub` (one component), which must be absent
    /// or an empty placeholder, in one `renameat` (both live on the same work root), then
    /// removes what is left of the prepared directory. A `sub` that is not empty is
    /// refused and the tree is discarded.
    pub async fn move_into(self, dest: &SandboxDir, sub: &str) -> Result<ExtractSummary> {
        let context = || {
            format!(
                "moving the prepared tree into {}",
                dest.host_path().join(sub).display()
            )
        };
        let moved = match rustix::fs::unlinkat(dest.fd(), sub, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => rustix::fs::renameat_with(
                self.dir().fd(),
                TREE,
                dest.fd(),
                sub,
                RenameFlags::NOREPLACE,
            )
            .map_err(|e| Error::io(context(), e.into())),
            Err(Errno::NOTEMPTY | Errno::EXIST) => Err(Error::io(
                context(),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it is not empty: the workspace was already materialized",
                ),
            )),
            Err(e) => Err(Error::io(context(), e.into())),
        };
        let summary = self.summary;
        self.discard_in_background().await;
        moved.map(|()| summary)
    }

    /// Removes the prepared directory (and the tree, if it was not moved away), waiting
    /// (bounded) for the deletion.
    pub async fn discard(self) {
        self.remove(DISCARD_WAIT).await;
    }

    /// Removes the prepared directory as [`PreparedTree::discard`] does, without waiting
    /// for the deletion: the directory is unreachable at once and deleted in the
    /// background, counted by its root ([`WorkRoot::removals_settled`] waits for it). For
    /// what is left once the tree is in its sandbox, on the way to the command.
    pub async fn discard_in_background(self) {
        self.remove(Duration::ZERO).await;
    }

    async fn remove(mut self, wait: Duration) {
        let Some(dir) = self.dir.take() else { return };
        if let Err(e) = dir.remove(wait).await {
            tracing::warn!(dir = %dir.host_path().display(), error = %e, "removing a prepared tree failed; a sweep retries once this process is gone");
        }
    }
}

impl Drop for PreparedTree {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let in_flight = dir.root().removal_started();
        let remove = move || {
            remove_now(&dir);
            drop(in_flight);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Removes a directory that was never handed out (blocking).
fn remove_now(dir: &SandboxDir) {
    let path = dir.root().proc_path().join(dir.name());
    if let Err(e) = remove_via_tombstone(&path) {
        tracing::warn!(dir = %dir.host_path().display(), error = %e, "removing a refused prepared tree failed; a sweep retries once this process is gone");
    }
}
