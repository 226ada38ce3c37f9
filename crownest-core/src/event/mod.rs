//! Events: the envelope, every kind, and the hash chain (DESIGN §2.3).
//!
//! `hash = sha256(previous hash ‖ canonical JSON of the event without "hash")`, the first
//! event chaining from 32 zero bytes. Canonical JSON is RFC 8785 (JCS, [`crate::canonical`]). [`seal`] is the only place an event gets its seq and
//! hash; stores call it inside their append transaction. [`verify_chain`] proves offline
//! that no event was dropped, reordered, duplicated or edited.
//!
//! Files: this one (the envelope and every kind), `chain.rs` (hashing, sealing, verifying
//! the chain, and the append rule after `terminal`).

use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::status::RunStatus;
use crate::time::Timestamp;

mod chain;

pub use chain::{
    ChainError, ChainSummary, canonical_json, check_append, seal, seal_all, verify_against,
    verify_chain,
};

/// The hash the first event of a run chains from: 32 zero bytes, hex encoded.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` / `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Phase of archive intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ArchivePhase {
    /// Bytes arriving.
    Receiving,
    /// Digest and policy checks.
    Verifying,
    /// Writing into the workspace.
    Extracting,
}

/// Why a kill rung happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// The execution deadline passed.
    Timeout,
    /// A client canceled.
    Cancel,
    /// A limit was exceeded.
    OutputLimit,
    /// The command exited but left processes behind.
    Leftover,
}

/// Why an artifact could not be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ArtifactErrorReason {
    /// Nothing at that path.
    NotFound,
    /// A symlink, fifo, socket or device.
    NotRegular,
    /// The path resolves outside the workspace.
    EscapesWorkspace,
    /// Over the per-artifact or total cap.
    TooLarge,
    /// The path is lexically invalid.
    InvalidPath,
}

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Non-zero exit code.
    ExitNonzero,
    /// Killed by a signal it did not ask for.
    Signaled,
    /// The execution deadline passed.
    TimedOut,
    /// Memory, pids or another limit ended it.
    LimitExceeded,
    /// The command could not be started.
    SpawnFailed,
    /// The sandbox failed.
    SandboxError,
    /// The archive was refused at start.
    ArchiveRejected,
    /// A `required` artifact could not be collected.
    MissingRequiredArtifact,
    /// The host went away while the run was unfinished.
    HostRestarted,
}

impl FailureKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExitNonzero => "exit_nonzero",
            Self::Signaled => "signaled",
            Self::TimedOut => "timed_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::SpawnFailed => "spawn_failed",
            Self::SandboxError => "sandbox_error",
            Self::ArchiveRejected => "archive_rejected",
            Self::MissingRequiredArtifact => "missing_required_artifact",
            Self::HostRestarted => "host_restarted",
        }
    }
}

/// A typed failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The kind.
    pub kind: FailureKind,
    /// A human-readable message (never contains env values).
    pub message: String,
}

impl Failure {
    /// Builds a failure.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A chunk of output: UTF-8 text or base64, and its byte offset within the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    /// Byte offset of this chunk within its stream.
    pub offset: u64,
    /// UTF-8 text; absent when the chunk is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Base64 of the raw bytes when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl OutputChunk {
    /// The raw bytes of this chunk.
    pub fn bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        match (&self.data, &self.data_base64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// Number of raw bytes in this chunk.
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// True when the chunk carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The payload of an event; serialized flat into the envelope with a `type` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum EventKind {
    /// What the client asked for: the first event of every run (evidence v2).
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Spec {
        /// The accepted spec (secret names only, never their values).
        spec: crate::evidence::SpecRecord,
    },
    /// The source archive was verified and attached to the run.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    ArchiveVerified {
        /// Size in bytes.
        size_bytes: u64,
        /// sha256 of the archive.
        sha256: Sha256Digest,
        /// How it arrived.
        upload: crate::run::UploadKind,
    },
    /// What the host used for the command: the template's identity and the isolation the
    /// backend enforced. Recorded when the sandbox is made, and again when what was
    /// enforced changed by the end of the command (the last one holds).
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Environment {
        /// What the template resolved to (absent when the backend could not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<crate::backend::TemplateIdentity>,
        /// What the backend enforced.
        isolation: crate::backend::IsolationReport,
    },
    /// A state change.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Status {
        /// The new state.
        status: RunStatus,
        /// The state before (absent for the first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<RunStatus>,
    },
    /// Archive intake progress (throttled).
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    ArchiveProgress {
        /// Phase.
        phase: ArchivePhase,
        /// Bytes done in this phase.
        bytes_done: u64,
        /// Bytes in total for this phase (0 if unknown).
        bytes_total: u64,
        /// Entries seen (extracting/verifying).
        entries: u64,
    },
    /// Standard output.
    Stdout(OutputChunk),
    /// Standard error.
    Stderr(OutputChunk),
    /// A stream reached its cap; later bytes are drained and dropped.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    OutputTruncated {
        /// Which stream.
        stream: OutputStream,
        /// Bytes dropped (known when the run ended; 0 at the moment of truncation).
        bytes_dropped: u64,
    },
    /// An artifact was collected.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    ArtifactCollected {
        /// Its id.
        artifact_id: ArtifactId,
        /// The requested path.
        path: String,
        /// Size in bytes.
        size_bytes: u64,
        /// sha256 of its bytes.
        sha256: Sha256Digest,
        /// Unix mode bits (permissions only).
        mode: u32,
        /// Entries of a directory artifact left out of its tar (links, special files, ...),
        /// each with its path and reason. Absent when nothing was skipped.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<crate::artifact::SkippedEntry>,
    },
    /// An artifact could not be collected.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    ArtifactError {
        /// The requested path.
        path: String,
        /// Why.
        reason: ArtifactErrorReason,
        /// Details.
        message: String,
    },
    /// Liveness while running.
    Heartbeat {},
    /// One rung of the kill ladder.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Kill {
        /// `SIGTERM` / `SIGKILL`, when a signal was sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// `destroy` when the sandbox was destroyed instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        /// Why.
        reason: KillReason,
    },
    /// The last event of every run.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Terminal {
        /// `succeeded`, `failed` or `canceled`.
        status: RunStatus,
        /// Exit code when the command exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Signal number when the command was killed by one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// The failure, for `failed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
        /// From creation to terminal, in milliseconds.
        duration_ms: u64,
        /// Both output streams' totals and digests (absent when the command never ran, or
        /// when the run was ended by recovery, which cannot know them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<crate::evidence::OutputSummary>,
        /// What happened to the sandbox (evidence v2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<crate::evidence::EvidenceSandbox>,
        /// The CrowNest version that ended the run (evidence v2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crownest_version: Option<String>,
        /// sha256 of the Evidence Bundle's canonical JSON without `events` and
        /// `terminalEvent` (evidence v2): binds every field of the bundle to the chain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle_digest: Option<Sha256Digest>,
    },
    /// A non-terminal problem.
    #[cfg_attr(feature = "openapi", schema(rename_all = "camelCase"))]
    Error {
        /// Stable code (`archive_rejected`, `cleanup_failed`, ...).
        code: String,
        /// Message.
        message: String,
    },
}

impl EventKind {
    /// The wire `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Spec { .. } => "spec",
            Self::ArchiveVerified { .. } => "archive_verified",
            Self::Environment { .. } => "environment",
            Self::Status { .. } => "status",
            Self::ArchiveProgress { .. } => "archive_progress",
            Self::Stdout(_) => "stdout",
            Self::Stderr(_) => "stderr",
            Self::OutputTruncated { .. } => "output_truncated",
            Self::ArtifactCollected { .. } => "artifact_collected",
            Self::ArtifactError { .. } => "artifact_error",
            Self::Heartbeat {} => "heartbeat",
            Self::Kill { .. } => "kill",
            Self::Terminal { .. } => "terminal",
            Self::Error { .. } => "error",
        }
    }

    /// True for the `terminal` event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Terminal { .. })
    }
}

/// An event before it is sealed by the store (no seq, no hash yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
}

impl NewEvent {
    /// An event happening now.
    pub fn now(kind: EventKind) -> Self {
        Self {
            at: Timestamp::now(),
            kind,
        }
    }
}

/// A durable event: `{"runId","seq","at","type", ...payload, "hash"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The run.
    pub run_id: RunId,
    /// Gap-free sequence number from 1.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Type and payload.
    #[serde(flatten)]
    pub kind: EventKind,
    /// Chain hash (hex).
    pub hash: String,
}
