//! The durable run record.

use serde::{Deserialize, Serialize};

use crate::event::{Failure, GENESIS_HASH};
use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::spec::{Limits, RunSpec};
use crate::status::RunStatus;
use crate::time::Timestamp;

/// How the archive arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UploadKind {
    /// One request body.
    Direct,
    /// A staged, chunked transfer.
    Staged,
    /// Attached by digest to an archive already stored.
    Existing,
}

/// What the client declares about an archive before sending it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveDescriptor {
    /// Exact size in bytes.
    pub size_bytes: u64,
    /// sha256 of the bytes.
    pub sha256: Sha256Digest,
}

impl ArchiveDescriptor {
    /// Refuses bytes that are not the declared archive: a different size is
    /// [`RejectReason::SizeMismatch`](crate::RejectReason::SizeMismatch), else a different
    /// digest [`RejectReason::DigestMismatch`](crate::RejectReason::DigestMismatch).
    pub fn check(&self, size_bytes: u64, sha256: &Sha256Digest) -> crate::error::Result<()> {
        use crate::error::{Error, RejectReason};
        if self.size_bytes != size_bytes {
            return Err(Error::rejected(
                RejectReason::SizeMismatch,
                None,
                format!("declared {} bytes, received {size_bytes}", self.size_bytes),
            ));
        }
        if self.sha256 != *sha256 {
            return Err(Error::rejected(
                RejectReason::DigestMismatch,
                None,
                format!("declared sha256 {}, received {sha256}", self.sha256),
            ));
        }
        Ok(())
    }
}

/// A verified archive attached to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ArchiveInfo {
    /// Size in bytes.
    pub size_bytes: u64,
    /// sha256.
    pub sha256: Sha256Digest,
    /// How it arrived.
    pub upload: UploadKind,
    /// Entries in the tar (from the policy check).
    pub entries: u64,
    /// Bytes the tar expands to.
    pub extracted_bytes: u64,
}

/// A collected artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Its id.
    pub artifact_id: ArtifactId,
    /// The run it belongs to.
    pub run_id: RunId,
    /// The requested path.
    pub path: String,
    /// `file`, or `directory` (a tar of the directory).
    pub kind: ArtifactKind,
    /// Size in bytes of the stored blob.
    pub size_bytes: u64,
    /// sha256 of the stored blob.
    pub sha256: Sha256Digest,
    /// Permission bits of the source.
    pub mode: u32,
    /// Entries of a directory artifact left out of its tar, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::artifact::SkippedEntry>,
}

/// What an artifact's blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// The bytes of a regular file.
    File,
    /// An uncompressed tar of a directory's regular files and subdirectories.
    Directory,
}

/// A recorded artifact error (mirrors the `artifact_error` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ArtifactErrorRecord {
    /// The requested path.
    pub path: String,
    /// Why.
    pub reason: crate::event::ArtifactErrorReason,
    /// Details.
    pub message: String,
}

/// Timestamps of a run's milestones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct RunTimestamps {
    pub created: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_verified: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_started: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_ended: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Timestamp>,
}

impl RunTimestamps {
    /// Records the milestone a status change marks, at the time of its `status` event (the
    /// one rule evidence v2 derives them by): `queued` → `started`, `running` →
    /// `commandStarted`, `finalizing` after `running` → `commandEnded`. Only the first
    /// occurrence counts.
    pub fn on_status(&mut self, status: RunStatus, at: Timestamp) {
        match status {
            RunStatus::Queued if self.started.is_none() => self.started = Some(at),
            RunStatus::Running if self.command_started.is_none() => self.command_started = Some(at),
            RunStatus::Finalizing
                if self.command_started.is_some() && self.command_ended.is_none() =>
            {
                self.command_ended = Some(at)
            }
            _ => {}
        }
    }
}

pub use crate::ownership::{RunOwner, process_start_ticks};

/// The sandbox of a run, as far as the record knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    /// Backend-specific id (container id, directory, ...).
    pub id: String,
    /// Kept after the run.
    pub kept: bool,
    /// When a kept sandbox is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until: Option<Timestamp>,
    /// Destroyed: nothing of it runs and nothing can reach it any more.
    pub destroyed: bool,
    /// Destroyed, but its files were still being deleted in the background when the run
    /// ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removal_pending: bool,
}

/// The durable record of a Workspace Run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Id.
    pub id: RunId,
    /// Current state.
    pub status: RunStatus,
    /// The spec as asked, with `secrets` emptied (see `secret_names`). Its `env` (plain
    /// settings) is kept with the values.
    pub spec: RunSpec,
    /// The resolved backend name.
    pub backend: String,
    /// The resolved limits.
    pub limits: Limits,
    /// Names of the spec's secrets, sorted (their values are never stored: see
    /// [`crate::secret`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// The verified archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveInfo>,
    /// Milestones.
    pub timestamps: RunTimestamps,
    /// Exit code of the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Failure of a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Collected artifacts.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Artifact errors.
    #[serde(default)]
    pub artifact_errors: Vec<ArtifactErrorRecord>,
    /// The sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxRecord>,
    /// Who drives the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<RunOwner>,
    /// A client asked to cancel (set only by `Store::request_cancel`).
    #[serde(default)]
    pub cancel_requested: bool,
    /// Next event seq (maintained by the store).
    pub next_seq: u64,
    /// Hash of the last event (maintained by the store).
    pub chain_head: String,
    /// The run's chain starts with a `spec` event, so its evidence is v2 (every field bound
    /// to the chain). False for runs created by earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evidence_v2: bool,
}

impl RunRecord {
    /// What a driver polling the store must stop for: a cancel asked through the store, or
    /// the run already ended by someone else (an engine that found this engine's lease
    /// expired failed it; the command must not go on).
    pub fn stop_requested(&self) -> bool {
        self.cancel_requested || self.status.is_terminal()
    }

    /// True when the run has ended and no event has a seq greater than `after_seq`: a
    /// reader whose cursor is `after_seq` has seen (or skipped) the `terminal` event and
    /// will never see another one. The store seals `terminal` in the same commit as the
    /// terminal record, so a terminal record's `next_seq` is final.
    pub fn ended_by(&self, after_seq: u64) -> bool {
        self.status.is_terminal() && self.next_seq.saturating_sub(1) <= after_seq
    }

    /// True when `other` records the same create request as `self`, as far as a record can
    /// tell: the whole spec (plain `env` values included) and the secret names. Secret
    /// values are never stored, so they cannot be compared. This is the rule for an
    /// idempotency key used twice: the same request gets the first run back, another one
    /// is refused.
    pub fn same_request(&self, other: &RunRecord) -> bool {
        self.spec == other.spec && self.secret_names == other.secret_names
    }

    /// A new record in `awaiting_archive`. `spec.secrets` is emptied: the record keeps only
    /// their names.
    pub fn new(
        id: RunId,
        mut spec: RunSpec,
        backend: String,
        limits: Limits,
        owner: RunOwner,
    ) -> Self {
        let secret_names = spec.secrets.keys().cloned().collect();
        spec.secrets.clear();
        Self {
            id,
            status: RunStatus::AwaitingArchive,
            spec,
            backend,
            limits,
            secret_names,
            archive: None,
            timestamps: RunTimestamps {
                created: Some(Timestamp::now()),
                ..Default::default()
            },
            exit_code: None,
            signal: None,
            failure: None,
            artifacts: Vec::new(),
            artifact_errors: Vec::new(),
            sandbox: None,
            owner: Some(owner),
            cancel_requested: false,
            next_seq: 1,
            chain_head: GENESIS_HASH.to_owned(),
            evidence_v2: true,
        }
    }
}
