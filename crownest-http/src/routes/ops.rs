//! Operations: liveness and the OpenAPI document (metrics: `crate::metrics`; readiness:
//! `crate::readiness`).

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::wire::Health;

/// Liveness (no token).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    security(()),
    responses((status = 200, description = "The server answers.", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This document: the OpenAPI 3.1 description of the API, generated from the code.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json",
               body = serde_json::Value))
)]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json().to_owned(),
    )
        .into_response()
}
