//! The router and its handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use crownest_core::store::RunQuery;
use crownest_core::{
    ArchiveDescriptor, ArtifactId, RunId, RunSpec, RunStatus, Sha256Digest, TransferId,
    WorkspaceRuns,
};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use serde_json::json;

use crate::config::HttpConfig;
use crate::error::{ApiError, ApiResult};
use crate::tokens::{Scope, constant_time_eq};

/// Every route of the API as `(method, path)`, in OpenAPI path syntax. The OpenAPI document
/// and a test keep this list, the router and `/v1/openapi.json` in sync.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{id}"),
    ("DELETE", "/v1/runs/{id}"),
    ("PUT", "/v1/runs/{id}/archive"),
    ("POST", "/v1/runs/{id}/archive/attach"),
    ("HEAD", "/v1/archives/{sha256}"),
    ("POST", "/v1/runs/{id}/transfers"),
    ("PUT", "/v1/transfers/{tid}"),
    ("GET", "/v1/transfers/{tid}"),
    ("POST", "/v1/transfers/{tid}/complete"),
    ("POST", "/v1/runs/{id}/start"),
    ("POST", "/v1/runs/{id}/cancel"),
    ("GET", "/v1/runs/{id}/events"),
    ("GET", "/v1/runs/{id}/events/stream"),
    ("GET", "/v1/runs/{id}/evidence"),
    ("GET", "/v1/artifacts/{id}"),
    ("GET", "/v1/host-key"),
];

#[derive(Debug, Clone)]
struct AppState {
    engine: WorkspaceRuns,
    config: Arc<HttpConfig>,
    subscribers: Arc<AtomicU64>,
}

/// The API as an axum [`Router`] a host application mounts (or `crownest serve` runs).
///
/// Every route but `/healthz` requires `Authorization: Bearer <token>` when
/// [`HttpConfig::token`] is set. CORS is off (no CORS headers are sent). Bodies are capped per
/// route. No request value reaches a filesystem path: ids and digests are parsed into typed
/// values before the engine sees them.
pub fn router(engine: WorkspaceRuns, config: HttpConfig) -> Router {
    let json_limit = config.json_body_limit;
    let chunk_limit = usize::try_from(engine.config().chunk_size_bytes).unwrap_or(usize::MAX);
    let state = AppState {
        engine,
        config: Arc::new(config),
        subscribers: Arc::new(AtomicU64::new(0)),
    };
    let allowed = state.config.allowed_backends_of(&state.engine);
    let api = Router::new()
        .merge(crate::metrics::routes(
            state.engine.clone(),
            state.subscribers.clone(),
        ))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(delete_run))
        // Streamed from the body; the engine caps it at the direct-upload limit.
        .route(
            "/v1/runs/{id}/archive",
            put(put_archive).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/runs/{id}/archive/attach", post(attach_archive))
        .route("/v1/archives/{sha256}", head(head_archive))
        .route("/v1/runs/{id}/transfers", post(begin_transfer))
        .route(
            "/v1/transfers/{tid}",
            put(put_chunk)
                .get(get_transfer)
                .layer(DefaultBodyLimit::max(chunk_limit)),
        )
        .route("/v1/transfers/{tid}/complete", post(complete_transfer))
        .route("/v1/runs/{id}/start", post(start_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/events", get(list_events))
        .route("/v1/runs/{id}/events/stream", get(stream_events))
        .route("/v1/runs/{id}/evidence", get(evidence))
        .route("/v1/artifacts/{id}", get(artifact))
        .route("/v1/host-key", get(host_key))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(crate::readiness::routes(
            state.engine.clone(),
            allowed,
            state.config.readiness_cache,
        ))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .layer(DefaultBodyLimit::max(json_limit))
        // Outermost: request ids, access log and HTTP metrics see every answer (401s too).
        .layer(middleware::from_fn(crate::observe::observe_request))
        .with_state(state)
}

/// Who made a request (put in the request's extensions by the auth layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The token's name (`token` for the single admin token).
    pub(crate) name: String,
}

async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    if config.token.is_none() && config.tokens.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let needed = Scope::required_for(request.method(), request.uri().path());
    let single = config
        .token
        .as_ref()
        .zip(given)
        .is_some_and(|(t, g)| constant_time_eq(g.as_bytes(), t.as_bytes()));
    let caller = if single {
        Caller {
            name: "token".into(),
        }
    } else {
        match given.and_then(|g| config.tokens.find(g)) {
            Some(entry) if entry.allows(needed) => Caller {
                name: entry.name.clone(),
            },
            Some(entry) => {
                let mut err = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "token {:?} lacks the {needed} scope this request needs",
                        entry.name
                    ),
                );
                err.insert("scope", json!(needed));
                return err.into_response();
            }
            None => {
                let mut resp = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required",
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn run_id(s: &str) -> ApiResult<RunId> {
    Ok(RunId::parse(s)?)
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(v)| v).map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, e.body_text())
    })
}

async fn create_run(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RunSpec>, JsonRejection>,
) -> ApiResult<Response> {
    let mut spec = json_body(body)?;
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
        spec.idempotency_key = Some(key.to_owned());
    }
    check_backend_allowed(&s, &spec)?;
    let run = s.engine.create(spec).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

/// The server's backend policy ([`HttpConfig::allowed_backends`]): 400
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
    err.insert("field", json!("backend"));
    err.insert("backend", json!(backend));
    err.insert("allowed", json!(allowed));
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
                    .map_err(|_| ApiError::bad_request("limit must be a number"))?;
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
    let limit = limit.clamp(1, 500);
    q.limit = limit;
    Ok((q, limit))
}

async fn list_runs(
    State(s): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<serde_json::Value>> {
    let (query, limit) = parse_list_query(pairs)?;
    let runs = s.engine.list(&query).await?;
    let next = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(json!({ "runs": runs, "nextCursor": next })))
}

/// `DELETE /v1/runs/{id}`: retention. The run's record, events, evidence and artifact
/// records are deleted for good (its blobs go at the next garbage collection).
async fn delete_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    s.engine.delete(&run_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.engine.get(&run_id(&id)?).await?).into_response())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII")))
        })
        .transpose()
}

async fn put_archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let sha = header_str(&headers, "x-archive-sha256")?
        .ok_or_else(|| ApiError::bad_request("X-Archive-Sha256 is required"))?;
    let sha256 = Sha256Digest::parse(sha)?;
    let size_bytes: u64 = header_str(&headers, "content-length")?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "Content-Length is required",
            )
        })?
        .parse()
        .map_err(|_| ApiError::bad_request("Content-Length must be a number"))?;
    let max = s.engine.config().direct_upload_max_bytes;
    if size_bytes > max {
        return Err(ApiError::from(crownest_core::Error::LimitExceeded {
            limit: "directUploadMaxBytes",
            max,
        }));
    }
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let run = s
        .engine
        .upload_archive_stream(&id, &ArchiveDescriptor { size_bytes, sha256 }, stream)
        .await?;
    Ok(Json(run).into_response())
}

async fn attach_archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ArchiveDescriptor>, JsonRejection>,
) -> ApiResult<Response> {
    let desc = json_body(body)?;
    Ok(Json(s.engine.attach_archive(&run_id(&id)?, &desc).await?).into_response())
}

async fn head_archive(State(s): State<AppState>, Path(sha): Path<String>) -> ApiResult<Response> {
    let sha = Sha256Digest::parse(&sha)?;
    match s.engine.has_archive(&sha).await? {
        Some(size) => Ok((StatusCode::OK, [("x-archive-size", size.to_string())]).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

async fn begin_transfer(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ArchiveDescriptor>, JsonRejection>,
) -> ApiResult<Response> {
    let desc = json_body(body)?;
    let t = s.engine.begin_transfer(&run_id(&id)?, &desc).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[derive(Debug, Deserialize)]
struct OffsetQuery {
    offset: u64,
}

async fn put_chunk(
    State(s): State<AppState>,
    Path(tid): Path<String>,
    Query(q): Query<OffsetQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let tid = TransferId::parse(&tid)?;
    let declared = crate::digest::declared_chunk_sha256(
        header_str(&headers, crate::digest::CONTENT_DIGEST)?,
        header_str(&headers, crate::digest::X_CHUNK_SHA256)?,
    )
    .map_err(ApiError::bad_request)?;
    let status = s
        .engine
        .put_chunk_checked(&tid, q.offset, body, declared.as_ref())
        .await?;
    Ok(Json(status).into_response())
}

async fn get_transfer(State(s): State<AppState>, Path(tid): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.engine.transfer_status(&TransferId::parse(&tid)?).await?).into_response())
}

async fn complete_transfer(
    State(s): State<AppState>,
    Path(tid): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(
        s.engine
            .complete_transfer(&TransferId::parse(&tid)?)
            .await?,
    )
    .into_response())
}

async fn start_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.engine.start(&run_id(&id)?).await?).into_response())
}

async fn cancel_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.engine.cancel(&run_id(&id)?).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    after_seq: Option<u64>,
    limit: Option<usize>,
}

async fn list_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let after = q.after_seq.unwrap_or(0);
    let events = s
        .engine
        .list_events(&id, after, q.limit.unwrap_or(100))
        .await?;
    let next = events.last().map_or(after, |e| e.seq);
    Ok(Json(json!({ "events": events, "nextAfterSeq": next })).into_response())
}

/// Decrements the subscriber gauge when an SSE stream is dropped.
struct SubscriberGuard(Arc<AtomicU64>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn stream_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let run = s.engine.get(&id).await?;
    let last_event_id = header_str(&headers, "last-event-id")?
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be a seq number"))
        })
        .transpose()?;
    // `afterSeq` wins when both are given.
    let after = q.after_seq.or(last_event_id).unwrap_or(0);
    // An ended run with nothing after the cursor: 204, which tells an EventSource to stop
    // reconnecting (an empty 200 stream would make it reconnect for ever).
    if run.ended_by(after) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    s.subscribers.fetch_add(1, Ordering::Relaxed);
    let guard = SubscriberGuard(s.subscribers.clone());
    let stream = s.engine.subscribe(&id, after).map(move |item| {
        let _keep = &guard;
        Ok::<_, Infallible>(match item {
            Ok(e) => SseEvent::default()
                .id(e.seq.to_string())
                .event(e.kind.type_name())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Err(err) => SseEvent::default()
                .event("stream_error")
                .data(json!({"code": err.code(), "message": err.to_string()}).to_string()),
        })
    });
    let keep_alive = KeepAlive::new()
        .interval(s.config.sse_keep_alive)
        .text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

#[derive(Debug, Deserialize)]
struct EvidenceQuery {
    format: Option<String>,
}

async fn evidence(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EvidenceQuery>,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let bundle = s.engine.evidence(&id).await?;
    match q.format.as_deref() {
        None | Some("crownest") => Ok(Json(bundle).into_response()),
        Some("in-toto") => Ok(Json(bundle.to_in_toto()).into_response()),
        // The envelope signed in the run's terminal commit; a run ended without a key (or
        // before evidence v2) is signed now.
        Some("dsse") => match s.engine.evidence_envelope(&id).await? {
            Some(stored) => Ok(Json(stored).into_response()),
            None => Ok(Json(bundle.to_dsse(signing_key(&s)?)).into_response()),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown format {other:?}; use in-toto or dsse"
        ))),
    }
}

fn signing_key(s: &AppState) -> ApiResult<&crownest_core::signing::HostKey> {
    s.config.signing_key.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_host_key",
            "this server has no host key to sign evidence with",
        )
    })
}

async fn host_key(State(s): State<AppState>) -> ApiResult<Response> {
    let public = signing_key(&s)?.public_key();
    Ok(Json(json!({
        "keyId": public.key_id(),
        "publicKey": public.to_hex(),
        "publicKeyPem": public.to_pem(),
    }))
    .into_response())
}

async fn artifact(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (a, reader) = s.engine.open_artifact(&ArtifactId::parse(&id)?).await?;
    let body = Body::from_stream(crownest_core::engine::reader_stream(reader));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size_bytes));
    if let Ok(v) = HeaderValue::from_str(a.sha256.as_str()) {
        h.insert("x-artifact-sha256", v);
    }
    if let Ok(v) = HeaderValue::from_str(&a.path) {
        h.insert("x-artifact-path", v);
    }
    Ok(resp)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::OPENAPI_JSON,
    )
        .into_response()
}

/// How long an SSE keep-alive comment waits by default.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
