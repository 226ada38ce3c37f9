//! Host directories: the one room for everything a backend does with directories on the
//! host (the process and WASI backends' sandboxes, the Docker backend's staging).
//!
//! * [`WorkRoot`]: the private work root, checked once (owned by the effective uid, mode
//!   0700, never a symlink, never group/other-writable, reached only through directories
//!   no other user controls) and then used only through its descriptor.
//! * [`SandboxDir`]: one sandbox directory with its [`Marker`], created crash-safe
//!   (`.creating-` + rename), used through its descriptor, removed through a `.removing-`
//!   tombstone with the deletion in the background ([`Removal`]).
//! * [`sweep`]: the one orphan sweep of a root (the decision is
//!   [`ownership::is_orphan`](crate::ownership::is_orphan)).
//! * [`extract`] and [`SandboxDir::materialize`]: the one bridge from the blocking
//!   extractor to a backend's async `materialize` (staging is the extractor's own; progress
//!   is coalesced, never queued, and throttled once, by the engine).
//! * [`PreparedTree`]: a run's tree extracted and checked at upload, moved into the
//!   sandbox at start (the one-pass path).
//! * [`collect_artifact`]: artifact collection relative to an open workspace descriptor.

mod extract;
mod prepared;
mod remove;
mod root;
mod sandbox;
mod sweep;

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;

pub use extract::extract;
pub use prepared::PreparedTree;
pub use remove::{TOMBSTONE_PREFIX, remove_tree, remove_via_tombstone};
pub use root::WorkRoot;
pub use sandbox::{CREATING_PREFIX, MARKER_FILE, Marker, Removal, SandboxDir};
pub use sweep::sweep;

use crate::artifact::{ArtifactFailure, CollectedArtifact};
use crate::event::ArtifactErrorReason;

/// [`collect_from_fd`](crate::artifact::collect_from_fd) on a blocking thread, for a
/// `Sandbox::collect_artifact` whose workspace is the open host directory `workspace`.
pub async fn collect_artifact(
    workspace: Arc<OwnedFd>,
    path: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::artifact::collect_from_fd(workspace.as_fd(), &path, max_bytes)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ArtifactFailure::new(
            ArtifactErrorReason::NotFound,
            format!("the collector task failed: {e}"),
        ))
    })
}
