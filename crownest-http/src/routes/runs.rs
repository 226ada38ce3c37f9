//! Runs: create, list, get, delete, start, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use crownest_core::store::RunQuery;
use crownest_core::{RunRecord, RunSpec, RunStatus};

use super::{AppState, run_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::wire::RunPage;

/// Create a run from a RunSpec.
///
/// The run starts in `awaiting_archive`. `env` holds plain settings (recorded with their
/// values); `secrets` (name → value) reach the command's environment, are masked in its
/// output and are never stored nor returned. The same `Idempotency-Key` (header, or the
/// body's `idempotencyKey`) with the same body returns the first run.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Names this create request: sent again with the same body it returns the first run (201, same id); with another body it is 422 idempotency_key_reused."),
    ),
    request_body(content = RunSpec, content_type = "application/json"),
    responses(
        (status = 201, description = "The run, in `awaiting_archive` (it names its secrets, never their values).", body = RunRecord),
        (status = 400, description = "`invalid_spec` (also a template the backend does not offer; `field`), `backend_not_allowed` (`field`, `backend`, `allowed`), or `bad_request` (malformed JSON, a non-ASCII Idempotency-Key).", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the JSON limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as application/json.", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused` (`idempotencyKey`, `runId`), or `not_enforceable` (`field`, `capability`, `backend`).", body = ErrorBody),
    )
)]
pub(crate) async fn create_run(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(mut spec): ApiJson<RunSpec>,
) -> ApiResult<Response> {
    if let Some(key) = super::header_str(&headers, "idempotency-key")? {
        spec.idempotency_key = Some(key.to_owned());
    }
    check_backend_allowed(&s, &spec)?;
    let run = s.engine.create(spec).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

/// The server's backend policy ([`HttpConfig::allowed_backends`](crate::HttpConfig)): 400
/// `backend_not_allowed` for a backend a client may not choose, named or by default.
fn check_backend_allowed(s: &AppState, spec: &RunSpec) -> ApiResult<()> {
    let backend = spec
        .backend
        .as_deref()
        .unwrap_or_else(|| s.engine.default_backend());
    let allowed = s.config.allowed_backends_of(&s.engine);
    if allowed.iter().any(|b| b == backend) {
        return Ok(());
    }
    let how = if spec.backend.is_some() {
        "backend"
    } else {
        "the default backend"
    };
    let mut err = ApiError::new(
        StatusCode::BAD_REQUEST,
        "backend_not_allowed",
        format!(
            "{how} {backend:?} is not allowed on this server; allowed: {}",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ),
    );
    let d = err.detail_mut();
    d.field = Some("backend".into());
    d.backend = Some(backend.to_owned());
    d.allowed = Some(allowed);
    Err(err)
}

/// `GET /v1/runs` query: `status`, `backend`, `label=KEY=VALUE` (repeatable; every one
/// must match), `createdAfter` / `createdBefore` (RFC 3339), `limit`, `cursor`. An unknown
/// parameter is refused, so a misspelt filter never silently lists everything.
fn parse_list_query(pairs: Vec<(String, String)>) -> ApiResult<(RunQuery, usize)> {
    let mut q = RunQuery::default();
    let mut limit = 50usize;
    let time = |name: &str, v: &str| {
        crownest_core::Timestamp::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time like 2026-01-31T12:00:00Z, got {v:?}"
            ))
        })
    };
    for (key, value) in pairs {
        match key.as_str() {
            "status" => {
                q.status =
                    Some(RunStatus::parse(&value).ok_or_else(|| {
                        ApiError::bad_request(format!("unknown status {value:?}"))
                    })?);
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}"))
                    })?;
            }
            "cursor" => q.before = Some(run_id(&value)?),
            "backend" => q.backend = Some(value),
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("label must be KEY=VALUE, got {value:?}"))
                })?;
                q.labels.insert(k.to_owned(), v.to_owned());
            }
            "createdAfter" => q.created_after = Some(time("createdAfter", &value)?),
            "createdBefore" => q.created_before = Some(time("createdBefore", &value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (status, backend, label, createdAfter, \
                     createdBefore, limit, cursor)"
                )));
            }
        }
    }
    q.limit = limit;
    Ok((q, limit))
}

/// One `label` filter of `GET /v1/runs` (for the document).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "=")]
#[allow(dead_code)]
pub(crate) struct LabelFilter(String);

/// The largest page of `GET /v1/runs`.
const MAX_PAGE: usize = 500;

/// List runs, newest first.
///
/// Every filter given must match. An unknown parameter is refused (a misspelt filter never
/// lists everything).
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(
        ("status" = Option<RunStatus>, Query, description = "Only runs in this state."),
        ("backend" = Option<String>, Query, description = "Only runs on this backend."),
        ("label" = Option<Vec<LabelFilter>>, Query, explode = true,
         description = "`KEY=VALUE`, repeatable: only runs with every one of these labels."),
        ("createdAfter" = Option<String>, Query, format = DateTime,
         description = "RFC 3339; inclusive."),
        ("createdBefore" = Option<String>, Query, format = DateTime,
         description = "RFC 3339; exclusive."),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 500,
         description = "Page size, 1 to 500 (50)."),
        ("cursor" = Option<String>, Query,
         description = "The previous page's `nextCursor`."),
    ),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, description = "`bad_request`: an unknown parameter, status, label, time or limit.", body = ErrorBody),
        (status = 404, description = "`not_found`: a cursor that is not a run id.", body = ErrorBody),
    )
)]
pub(crate) async fn list_runs(
    State(s): State<AppState>,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> ApiResult<Json<RunPage>> {
    let (query, limit) = parse_list_query(pairs)?;
    let runs = s.engine.list(&query).await?;
    let next_cursor = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(RunPage { runs, next_cursor }))
}

/// Delete an ended run (retention; admin scope).
///
/// The run's record, events, Evidence Bundle, artifact records and leftover transfers are
/// deleted for good; its blobs go at the next garbage collection unless another run names
/// them.
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition` (input `delete`): the run has not ended.", body = ErrorBody),
    )
)]
pub(crate) async fn delete_run(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    s.engine.delete(&run_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One run record.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    responses(
        (status = 200, description = "The run.", body = RunRecord),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn get_run(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(s.engine.get(&run_id(&id)?).await?))
}

/// Start a run whose archive is ready.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/start",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    responses(
        (status = 200, description = "The run, `queued` or further.", body = RunRecord),
        (status = 400, description = "`invalid_spec` (`field: secrets`): the run has secrets and was created on another server.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the run is not `archive_ready`.", body = ErrorBody),
    )
)]
pub(crate) async fn start_run(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(s.engine.start(&run_id(&id)?).await?))
}

/// Cancel a run (the kill ladder when it runs).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    responses(
        (status = 200, description = "The run.", body = RunRecord),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the run has already ended.", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_run(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(s.engine.cancel(&run_id(&id)?).await?))
}
