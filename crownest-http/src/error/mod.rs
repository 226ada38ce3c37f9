//! Errors on the wire: one shape, [`ErrorBody`] (`{"error": {"code", "message", ...}}`),
//! with the right status, for the handlers' errors and the framework's own refusals alike.

mod body;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crownest_core::Error;
use crownest_core::engine::staging::is_capacity_limit;

pub use body::{ErrorBody, ErrorDetail};

/// An error answered to an HTTP client: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status (not a run's: `http_status`, so the status-gate scan never mistakes it).
    http_status: StatusCode,
    /// Boxed: a handler's `Result` stays small.
    detail: Box<ErrorDetail>,
}

impl ApiError {
    /// A custom error.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            http_status: status,
            detail: Box::new(ErrorDetail::new(code, message)),
        }
    }

    /// 400 `bad_request` for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.http_status
    }

    /// The `code` of the body.
    pub fn code(&self) -> &str {
        &self.detail.code
    }

    /// The `error` object of the body.
    pub fn detail(&self) -> &ErrorDetail {
        &self.detail
    }

    /// The `error` object, to set the members its code defines.
    pub fn detail_mut(&mut self) -> &mut ErrorDetail {
        &mut self.detail
    }

    /// The same error answered with another status.
    pub fn with_status(self, status: StatusCode) -> Self {
        Self {
            http_status: status,
            ..self
        }
    }

    /// The body as sent.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: (*self.detail).clone(),
        }
    }
}

/// The status of an engine error.
fn status_of(e: &Error) -> StatusCode {
    match e {
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
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e.chain(), "internal error");
        }
        Self {
            http_status: status,
            detail: Box::new(ErrorDetail::of(&e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.http_status == StatusCode::UNAUTHORIZED;
        let mut resp = (self.http_status, Json(self.body())).into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
