//! Artifact collection: no-follow, fd-relative reads confined to the workspace (DESIGN §2.5).

use std::io::Read;
use std::path::Path;

use crate::event::ArtifactErrorReason;
use crate::run::ArtifactKind;

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
    /// Entries of a directory that were skipped (links, special files), for reporting.
    pub skipped: Vec<String>,
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
pub fn collect_from_dir(
    root: &Path,
    path: &str,
    max_bytes: u64,
) -> Result<CollectedArtifact, ArtifactFailure> {
    let _ = (root, max_bytes);
    Err(ArtifactFailure::new(
        ArtifactErrorReason::NotFound,
        format!("collector not implemented yet for {path:?}"),
    ))
}
