//! The one public error type of CrowNest.
//!
//! Each variant says *what* went wrong; its `Display` prints only its own level, and
//! [`std::error::Error::source`] carries the chain (the habit of hyper's error type).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::capability::{Capability, Requirement};
use crate::status::RunStatus;

/// Result alias used across CrowNest.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a lower layer (a backend's engine, an I/O call, a database).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an archive was refused. Serialized as a snake_case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The number of bytes received differs from the declared `sizeBytes`.
    SizeMismatch,
    /// The sha256 of the bytes differs from the declared `sha256`.
    DigestMismatch,
    /// The upload is larger than the route's limit (direct or staged).
    TooLarge,
    /// An entry path is absolute.
    AbsolutePath,
    /// An entry path has a `..` component.
    ParentTraversal,
    /// An entry would be written through a symlink.
    ThroughSymlink,
    /// A symlink or hardlink target leaves the extraction root.
    LinkEscapes,
    /// A device, fifo, socket or other special entry.
    SpecialFile,
    /// A path too long, too deep, or not representable.
    InvalidPath,
    /// A PAX or GNU metadata record over its cap.
    MetadataTooLarge,
    /// More entries than the limit (directories implied by deeper paths count as entries).
    TooManyEntries,
    /// The entry paths of the archive, implied directories included, add up to more bytes
    /// than the limit.
    TooManyPathBytes,
    /// More extracted bytes than the limit (in total or for one entry).
    TooManyBytes,
    /// The compression ratio went over the limit.
    CompressionRatio,
    /// The gzip stream is corrupt or truncated, or the tar structure is.
    Corrupt,
    /// Bytes follow the end of the gzip stream.
    TrailingData,
    /// Two entries with the same path where one would replace the other's kind.
    DuplicateEntry,
}

impl RejectReason {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SizeMismatch => "size_mismatch",
            Self::DigestMismatch => "digest_mismatch",
            Self::TooLarge => "too_large",
            Self::AbsolutePath => "absolute_path",
            Self::ParentTraversal => "parent_traversal",
            Self::ThroughSymlink => "through_symlink",
            Self::LinkEscapes => "link_escapes",
            Self::SpecialFile => "special_file",
            Self::InvalidPath => "invalid_path",
            Self::MetadataTooLarge => "metadata_too_large",
            Self::TooManyEntries => "too_many_entries",
            Self::TooManyPathBytes => "too_many_path_bytes",
            Self::TooManyBytes => "too_many_bytes",
            Self::CompressionRatio => "compression_ratio",
            Self::Corrupt => "corrupt",
            Self::TrailingData => "trailing_data",
            Self::DuplicateEntry => "duplicate_entry",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a chunk of a staged transfer was refused. Serialized as a snake_case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChunkRejectReason {
    /// The chunk's bytes do not have the sha256 sent with them.
    DigestMismatch,
    /// A chunk was already received at this offset with other bytes.
    Conflict,
}

impl ChunkRejectReason {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DigestMismatch => "digest_mismatch",
            Self::Conflict => "conflict",
        }
    }
}

impl fmt::Display for ChunkRejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every CrowNest API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such run, artifact, transfer, blob or evidence.
    #[error("{kind} not found: {id}")]
    NotFound {
        /// What was looked up (`run`, `artifact`, `transfer`, `blob`, `evidence`).
        kind: &'static str,
        /// The identifier that was not found.
        id: String,
    },
    /// A run spec or request field is invalid.
    #[error("invalid {field}: {message}")]
    InvalidSpec {
        /// The offending field, in wire (camelCase) form.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The run's state does not allow this operation.
    #[error("invalid transition from {from} on {input}")]
    InvalidTransition {
        /// The state the run was in.
        from: RunStatus,
        /// The input that was refused.
        input: &'static str,
    },
    /// The archive was refused; the run stays in `awaiting_archive` (or fails at start).
    #[error("archive rejected ({reason}){}: {message}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    ArchiveRejected {
        /// The typed reason.
        reason: RejectReason,
        /// The archive entry that caused it, when there is one.
        entry: Option<String>,
        /// A human-readable explanation.
        message: String,
    },
    /// A configured limit was exceeded.
    #[error("limit exceeded: {limit} (max {max})")]
    LimitExceeded {
        /// The limit's name (camelCase, as in the `limits` object).
        limit: &'static str,
        /// The maximum that applied.
        max: u64,
    },
    /// A concurrent writer got there first (e.g. `expected_next_seq` did not match).
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// The evidence of a run is asked for before the run ended.
    #[error("run {run_id} is not terminal yet")]
    NotTerminal {
        /// The run.
        run_id: String,
    },
    /// The run requires what its backend cannot enforce (a hard requirement of its spec,
    /// `crate::capability`); refused at `create`.
    #[error("{field} needs {capability}, which backend {backend} cannot enforce")]
    NotEnforceable {
        /// The spec field that asks for it (`limits.memoryBytes`, `network`, ...).
        field: String,
        /// The capability the backend lacks.
        capability: Capability,
        /// The backend name.
        backend: String,
    },
    /// A backend or store cannot do this.
    #[error("{operation} is not supported by {backend}")]
    Unsupported {
        /// The operation.
        operation: String,
        /// The backend or store name.
        backend: String,
    },
    /// A sandbox backend failed.
    #[error("backend {backend} failed")]
    Backend {
        /// The backend name.
        backend: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The store failed (I/O, database, poisoned after an earlier failure).
    #[error("store failed: {message}")]
    Store {
        /// What the store was doing.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// An I/O error outside of the store and backends.
    #[error("i/o error: {context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk of a staged transfer was refused; what was stored is untouched.
    #[error("chunk at offset {offset} rejected ({reason}): {message}")]
    ChunkRejected {
        /// The chunk's byte offset.
        offset: u64,
        /// The typed reason.
        reason: ChunkRejectReason,
        /// A human-readable explanation.
        message: String,
    },
    /// A staged transfer was completed before every chunk arrived; it is kept, so the
    /// client can send what is missing and complete again.
    #[error("transfer {transfer_id} is incomplete: {} byte range(s) missing", missing.len())]
    TransferIncomplete {
        /// The transfer.
        transfer_id: String,
        /// The missing byte ranges `[start, end)`, merged, in order.
        missing: Vec<[u64; 2]>,
    },
    /// An idempotency key was used again with a different request: the run it names was
    /// created from another spec, and is not returned.
    #[error("idempotency key {key:?} was already used for run {run_id} with a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The run created with it.
        run_id: String,
    },
    /// The engine is shutting down.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A host work root (where host-directory sandboxes and staging live) is not private:
    /// a symlink, owned by another user, writable by group or others, or reached through
    /// a directory another user controls. Nothing was read or written through it.
    #[error("unsafe work root {path}: {reason}")]
    UnsafeWorkRoot {
        /// The root (or the component of its path) that was refused.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    /// Shorthand for [`Error::InvalidSpec`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }

    /// [`Error::NotEnforceable`] for a requirement `backend` cannot meet.
    pub fn not_enforceable(requirement: &Requirement, backend: impl Into<String>) -> Self {
        Self::NotEnforceable {
            field: requirement.field.to_owned(),
            capability: requirement.capability,
            backend: backend.into(),
        }
    }

    /// Shorthand for [`Error::ArchiveRejected`].
    pub fn rejected(
        reason: RejectReason,
        entry: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::ArchiveRejected {
            reason,
            entry,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Store`] with a source.
    pub fn store(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Store {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(backend: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend: backend.into(),
            source: source.into(),
        }
    }

    /// A stable snake_case code for wire error bodies (`{"error": {"code", "message"}}`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::ArchiveRejected { .. } => "archive_rejected",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::Conflict { .. } => "conflict",
            Self::NotTerminal { .. } => "not_terminal",
            Self::Unsupported { .. } => "unsupported",
            Self::NotEnforceable { .. } => "not_enforceable",
            Self::Backend { .. } => "backend_error",
            Self::Store { .. } => "store_error",
            Self::Io { .. } => "io_error",
            Self::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Self::ChunkRejected { .. } => "chunk_rejected",
            Self::TransferIncomplete { .. } => "transfer_incomplete",
            Self::ShuttingDown => "shutting_down",
            Self::UnsafeWorkRoot { .. } => "unsafe_work_root",
        }
    }

    /// The full chain of messages, joined by `: ` (for logs and `error` events).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}
