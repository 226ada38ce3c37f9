//! [`ErrorBody`]: the one shape of every error response, written by the server and read by
//! the client (so an error crosses the wire without loss).

use crownest_core::capability::Capability;
use crownest_core::engine::staging::{OPEN_TRANSFERS_PER_RUN, STAGED_BYTES_PER_ENGINE};
use crownest_core::{ChunkRejectReason, Error, RejectReason, RunStatus};
use serde::{Deserialize, Serialize};

use crate::tokens::Scope;

/// The body of every error response: `{"error": {"code", "message", ...}}`.
///
/// Every status the API answers with 4xx or 5xx carries it, including what the framework
/// refuses before a handler runs (a malformed query, a body too large, a wrong content type,
/// an unknown route, a method the route does not have). Clients must ignore members they do
/// not know: new ones may be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` object: a stable `code`, a human-readable `message`, and the members that
/// code defines (absent when they do not apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable snake_case code (`not_found`, `invalid_spec`, `bad_request`, ...).
    pub code: String,
    /// Human-readable message (never Rust debug text, never a secret).
    pub message: String,
    /// The variant's own explanation, without the prefix `message` adds (`invalid_spec`,
    /// `conflict`, `archive_rejected`, `chunk_rejected`, `store_error`, `io_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What was looked up (`not_found`: `run`, `artifact`, `transfer`, `blob`, `route`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The identifier that was not found (`not_found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The offending field, camelCase (`invalid_spec`, `not_enforceable`, `backend_not_allowed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The typed reason (`archive_rejected`, `chunk_rejected`, `unsafe_work_root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The archive entry that caused an `archive_rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The state the run was in (`invalid_transition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RunStatus>,
    /// The refused input (`invalid_transition`: `start`, `cancel`, `delete`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The limit's name (`limit_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The maximum that applied (`limit_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// The capability the backend lacks (`not_enforceable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<Capability>,
    /// The backend concerned (`not_enforceable`, `backend_not_allowed`, `unsupported`,
    /// `backend_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// What is allowed instead (`backend_not_allowed`: backends; `method_not_allowed`:
    /// methods, as in the `Allow` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// The refused chunk's byte offset (`chunk_rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The transfer (`transfer_incomplete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// Missing byte ranges `[start, end)` (`transfer_incomplete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<[u64; 2]>>,
    /// The reused key (`idempotency_key_reused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The run concerned (`idempotency_key_reused`, `not_terminal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The operation (`unsupported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The path (`unsafe_work_root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The scope the request needs (`forbidden`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

impl ErrorDetail {
    /// A detail with only a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            ..Self::default()
        }
    }

    /// The wire members of an engine error (its `code`, its `Display` as `message`, and
    /// each of its fields).
    pub fn of(e: &Error) -> Self {
        let mut d = Self::new(e.code(), e.to_string());
        match e {
            Error::NotFound { kind, id } => {
                d.kind = Some((*kind).to_owned());
                d.id = Some(id.clone());
            }
            Error::InvalidSpec { field, message } => {
                d.field = Some(field.clone());
                d.detail = Some(message.clone());
            }
            Error::InvalidTransition { from, input } => {
                d.from = Some(*from);
                d.input = Some((*input).to_owned());
            }
            Error::ArchiveRejected {
                reason,
                entry,
                message,
            } => {
                d.reason = Some(reason.to_string());
                d.entry.clone_from(entry);
                d.detail = Some(message.clone());
            }
            Error::LimitExceeded { limit, max } => {
                d.limit = Some((*limit).to_owned());
                d.max = Some(*max);
            }
            Error::Conflict { message } => d.detail = Some(message.clone()),
            Error::NotTerminal { run_id } => d.run_id = Some(run_id.clone()),
            Error::NotEnforceable {
                field,
                capability,
                backend,
            } => {
                d.field = Some(field.clone());
                d.capability = Some(*capability);
                d.backend = Some(backend.clone());
            }
            Error::Unsupported { operation, backend } => {
                d.operation = Some(operation.clone());
                d.backend = Some(backend.clone());
            }
            // The source stays in the server's log: it may name host paths.
            Error::Backend { backend, .. } => d.backend = Some(backend.clone()),
            Error::Store { message, .. } => d.detail = Some(message.clone()),
            Error::Io { context, .. } => d.detail = Some(context.clone()),
            Error::ChunkRejected {
                offset,
                reason,
                message,
            } => {
                d.offset = Some(*offset);
                d.reason = Some(reason.as_str().to_owned());
                d.detail = Some(message.clone());
            }
            Error::TransferIncomplete {
                transfer_id,
                missing,
            } => {
                d.transfer_id = Some(transfer_id.clone());
                d.missing = Some(missing.clone());
            }
            Error::IdempotencyKeyReused { key, run_id } => {
                d.idempotency_key = Some(key.clone());
                d.run_id = Some(run_id.clone());
            }
            Error::UnsafeWorkRoot { path, reason } => {
                d.path = Some(path.clone());
                d.reason = Some(reason.clone());
            }
            _ => {}
        }
        d
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error.code, self.error.message)
    }
}

impl std::error::Error for ErrorBody {}

impl ErrorBody {
    /// The body of an error response as a client reads it: the JSON shape when it is one,
    /// else (a proxy's page, an empty body) a body with code `http_<status>` and the text
    /// (at most 1 KiB of it) as its message.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
            return parsed;
        }
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(1024).collect();
        let message = if text.trim().is_empty() {
            format!("HTTP status {status}")
        } else {
            text
        };
        Self {
            error: ErrorDetail::new(format!("http_{status}"), message),
        }
    }

    /// The engine error this body stands for, so a client handles a remote failure like a
    /// local one: every engine error's code comes back as the same variant with the same
    /// fields (and so the same `Display`). Codes of the HTTP layer: `no_route` and
    /// `no_host_key` are [`Error::NotFound`], `backend_not_allowed` is
    /// [`Error::InvalidSpec`]; any other comes back as [`Error::Backend`] (backend
    /// `http <status>`) whose source is this body ([`ErrorBody::of_error`] finds it).
    pub fn to_error(&self, status: u16) -> Error {
        let d = &self.error;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let detail = || d.detail.clone().unwrap_or_else(|| d.message.clone());
        match d.code.as_str() {
            "not_found" => Error::NotFound {
                kind: known(d.kind.as_deref(), NOT_FOUND_KINDS, "resource"),
                id: d.id.clone().unwrap_or_else(|| d.message.clone()),
            },
            "no_route" => Error::NotFound {
                kind: "route",
                id: d.id.clone().unwrap_or_else(|| d.message.clone()),
            },
            "no_host_key" => Error::NotFound {
                kind: "host key",
                id: d.message.clone(),
            },
            "invalid_spec" | "backend_not_allowed" => Error::InvalidSpec {
                field: s(&d.field),
                message: detail(),
            },
            "invalid_transition" => match d.from {
                Some(from) => Error::InvalidTransition {
                    from,
                    input: known(d.input.as_deref(), TRANSITION_INPUTS, "request"),
                },
                None => Error::Conflict { message: detail() },
            },
            "archive_rejected" => Error::ArchiveRejected {
                reason: wire_enum(&d.reason).unwrap_or(RejectReason::Corrupt),
                entry: d.entry.clone(),
                message: detail(),
            },
            "limit_exceeded" => Error::LimitExceeded {
                limit: known(d.limit.as_deref(), LIMIT_NAMES, "server limit"),
                max: d.max.unwrap_or(0),
            },
            "conflict" => Error::Conflict { message: detail() },
            "not_terminal" => Error::NotTerminal {
                run_id: d.run_id.clone().unwrap_or_else(|| d.message.clone()),
            },
            "not_enforceable" => match d.capability {
                Some(capability) => Error::NotEnforceable {
                    field: s(&d.field),
                    capability,
                    backend: s(&d.backend),
                },
                None => Error::InvalidSpec {
                    field: s(&d.field),
                    message: detail(),
                },
            },
            "unsupported" => Error::Unsupported {
                operation: s(&d.operation),
                backend: s(&d.backend),
            },
            "store_error" => Error::Store {
                message: detail(),
                source: Some(Box::new(self.clone())),
            },
            "io_error" => Error::Io {
                context: detail(),
                source: std::io::Error::other(self.clone()),
            },
            "chunk_rejected" => Error::ChunkRejected {
                offset: d.offset.unwrap_or(0),
                reason: wire_enum(&d.reason).unwrap_or(ChunkRejectReason::Conflict),
                message: detail(),
            },
            "transfer_incomplete" => Error::TransferIncomplete {
                transfer_id: s(&d.transfer_id),
                missing: d.missing.clone().unwrap_or_default(),
            },
            "idempotency_key_reused" => Error::IdempotencyKeyReused {
                key: s(&d.idempotency_key),
                run_id: s(&d.run_id),
            },
            "shutting_down" => Error::ShuttingDown,
            "unsafe_work_root" => Error::UnsafeWorkRoot {
                path: s(&d.path),
                reason: s(&d.reason),
            },
            "backend_error" if d.backend.is_some() => Error::Backend {
                backend: s(&d.backend),
                source: Box::new(self.clone()),
            },
            _ => Error::Backend {
                backend: format!("http {status}"),
                source: Box::new(self.clone()),
            },
        }
    }

    /// The body an error read from a response carries, when [`to_error`](Self::to_error)
    /// kept it as a source (every code without a variant of its own).
    pub fn of_error(e: &Error) -> Option<&ErrorBody> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(body) = err.downcast_ref::<ErrorBody>() {
                return Some(body);
            }
            cur = err.source();
        }
        None
    }
}

/// `kind`s of [`Error::NotFound`] the engine and the HTTP layer use.
const NOT_FOUND_KINDS: &[&str] = &[
    "run", "artifact", "transfer", "blob", "archive", "evidence", "route", "host key",
];

/// The names of state-machine inputs (`Error::InvalidTransition::input` is static).
const TRANSITION_INPUTS: &[&str] = &[
    "archive_verified",
    "start",
    "slot_acquired",
    "command_started",
    "command_ended",
    "cancel",
    "archive_ttl_expired",
    "finalized",
    "host_restarted",
    "delete",
];

/// The limits an engine names in `limit_exceeded`.
const LIMIT_NAMES: &[&str] = &[
    "directUploadMaxBytes",
    "stagedUploadMaxBytes",
    OPEN_TRANSFERS_PER_RUN,
    STAGED_BYTES_PER_ENGINE,
];

fn known(name: Option<&str>, list: &[&'static str], otherwise: &'static str) -> &'static str {
    name.and_then(|n| list.iter().find(|k| **k == n).copied())
        .unwrap_or(otherwise)
}

/// A snake_case wire enum (`reason`) from its string.
fn wire_enum<T: serde::de::DeserializeOwned>(v: &Option<String>) -> Option<T> {
    v.as_ref()
        .and_then(|s| serde_json::from_value(serde_json::Value::String(s.clone())).ok())
}
