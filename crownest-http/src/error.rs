//! Errors on the wire: `{"error": {"code", "message", ...}}` with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crownest_core::Error;
use crownest_core::engine::staging::is_capacity_limit;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// A custom error.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `code` of the body.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Adds a field to the error object (beside `code` and `message`).
    pub fn insert(&mut self, key: &str, value: serde_json::Value) {
        self.extra.insert(key.to_owned(), value);
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::InvalidSpec { .. } => StatusCode::BAD_REQUEST,
            // The spec is fine; this backend cannot enforce what it requires.
            Error::NotEnforceable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::InvalidTransition { .. }
            | Error::Conflict { .. }
            | Error::NotTerminal { .. }
            | Error::ChunkRejected { .. }
            | Error::TransferIncomplete { .. } => StatusCode::CONFLICT,
            Error::ArchiveRejected { reason, .. } => match reason {
                crownest_core::RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            // What is open right now (transfers): the same request may pass later.
            Error::LimitExceeded { limit, .. } if is_capacity_limit(limit) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::LimitExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            // The key names another request: retrying this one cannot succeed.
            Error::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut out = Self::new(status, e.code(), e.to_string());
        match &e {
            Error::ArchiveRejected { reason, entry, .. } => {
                out.extra.insert("reason".into(), json!(reason));
                if let Some(entry) = entry {
                    out.extra.insert("entry".into(), json!(entry));
                }
            }
            Error::InvalidTransition { from, input } => {
                out.extra.insert("from".into(), json!(from));
                out.extra.insert("input".into(), json!(input));
            }
            Error::InvalidSpec { field, .. } => {
                out.extra.insert("field".into(), json!(field));
            }
            Error::NotEnforceable {
                field,
                capability,
                backend,
            } => {
                out.extra.insert("field".into(), json!(field));
                out.extra.insert("capability".into(), json!(capability));
                out.extra.insert("backend".into(), json!(backend));
            }
            Error::ChunkRejected { offset, reason, .. } => {
                out.extra.insert("reason".into(), json!(reason));
                out.extra.insert("offset".into(), json!(offset));
            }
            Error::TransferIncomplete {
                transfer_id,
                missing,
            } => {
                out.extra.insert("transferId".into(), json!(transfer_id));
                out.extra.insert("missing".into(), json!(missing));
            }
            Error::IdempotencyKeyReused { key, run_id } => {
                out.extra.insert("idempotencyKey".into(), json!(key));
                out.extra.insert("runId".into(), json!(run_id));
            }
            Error::LimitExceeded { limit, max } => {
                out.extra.insert("limit".into(), json!(limit));
                out.extra.insert("max".into(), json!(max));
            }
            _ => {}
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e.chain(), "internal error");
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.extra);
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
