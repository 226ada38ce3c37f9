//! Operations: liveness, metrics, the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use crownest_core::RunStatus;
use crownest_core::store::RunQuery;

use super::AppState;
use crate::error::ApiResult;
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

/// Prometheus text: runs by status, events appended, bytes uploaded, runs started, open
/// SSE streams (admin scope).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.",
               content_type = "text/plain", body = String))
)]
pub(crate) async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP crownest_runs Runs in the store by status (sampled, at most 10000 per status)."
    );
    let _ = writeln!(out, "# TYPE crownest_runs gauge");
    for status in RunStatus::ALL {
        let n = s
            .engine
            .list(&RunQuery {
                status: Some(status),
                limit: 10_000,
                before: None,
                ..Default::default()
            })
            .await?
            .len();
        let _ = writeln!(out, "crownest_runs{{status=\"{status}\"}} {n}");
    }
    let m = s.engine.metrics();
    let _ = writeln!(
        out,
        "# HELP crownest_events_appended_total Events committed by this server."
    );
    let _ = writeln!(out, "# TYPE crownest_events_appended_total counter");
    let _ = writeln!(out, "crownest_events_appended_total {}", m.events_appended);
    let _ = writeln!(
        out,
        "# HELP crownest_bytes_uploaded_total Archive bytes received."
    );
    let _ = writeln!(out, "# TYPE crownest_bytes_uploaded_total counter");
    let _ = writeln!(out, "crownest_bytes_uploaded_total {}", m.bytes_uploaded);
    let _ = writeln!(
        out,
        "# HELP crownest_runs_started_total Runs started by this server."
    );
    let _ = writeln!(out, "# TYPE crownest_runs_started_total counter");
    let _ = writeln!(out, "crownest_runs_started_total {}", m.runs_started);
    let _ = writeln!(
        out,
        "# HELP crownest_active_subscribers Open SSE event streams."
    );
    let _ = writeln!(out, "# TYPE crownest_active_subscribers gauge");
    let _ = writeln!(
        out,
        "crownest_active_subscribers {}",
        s.subscribers.load(Ordering::Relaxed)
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
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
