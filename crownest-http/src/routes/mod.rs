//! The router, the auth layer, and the handlers by resource: [`runs`] (create, list, get,
//! delete, start, cancel), [`uploads`] (direct, attach, dedupe, staged transfers),
//! [`events`] (window and SSE), [`evidence`] (bundle, host key, artifacts), [`ops`]
//! (health, metrics, the OpenAPI document).

pub(crate) mod events;
pub(crate) mod evidence;
pub(crate) mod ops;
pub(crate) mod runs;
pub(crate) mod uploads;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post, put};
use crownest_core::{RunId, WorkspaceRuns};

use crate::config::HttpConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::tokens::{Scope, constant_time_eq};

/// Every route of the API as `(method, path)`, in OpenAPI path syntax. Tests keep this
/// list, the router and the generated `/v1/openapi.json` in sync.
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
pub(crate) struct AppState {
    pub(crate) engine: WorkspaceRuns,
    pub(crate) config: Arc<HttpConfig>,
    pub(crate) subscribers: Arc<AtomicU64>,
}

/// The API as an axum [`Router`] a host application mounts (or `crownest serve` runs).
///
/// Every route but `/healthz` requires `Authorization: Bearer <token>` when
/// [`HttpConfig::token`] is set. CORS is off (no CORS headers are sent). Bodies are capped per
/// route. No request value reaches a filesystem path: ids and digests are parsed into typed
/// values before the engine sees them. Every error answer is an [`ErrorBody`](crate::ErrorBody),
/// the framework's own refusals (unknown route, wrong method, malformed query, body too
/// large, wrong content type) included.
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
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/v1/runs", post(runs::create_run).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::get_run).delete(runs::delete_run))
        // Streamed from the body; the engine caps it at the direct-upload limit.
        .route(
            "/v1/runs/{id}/archive",
            put(uploads::put_archive).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/runs/{id}/archive/attach",
            post(uploads::attach_archive),
        )
        .route("/v1/archives/{sha256}", head(uploads::head_archive))
        .route("/v1/runs/{id}/transfers", post(uploads::begin_transfer))
        .route(
            "/v1/transfers/{tid}",
            put(uploads::put_chunk)
                .get(uploads::get_transfer)
                .layer(DefaultBodyLimit::max(chunk_limit)),
        )
        .route(
            "/v1/transfers/{tid}/complete",
            post(uploads::complete_transfer),
        )
        .route("/v1/runs/{id}/start", post(runs::start_run))
        .route("/v1/runs/{id}/cancel", post(runs::cancel_run))
        .route("/v1/runs/{id}/events", get(events::list_events))
        .route("/v1/runs/{id}/events/stream", get(events::stream_events))
        .route("/v1/runs/{id}/evidence", get(evidence::evidence))
        .route("/v1/artifacts/{id}", get(evidence::artifact))
        .route("/v1/host-key", get(evidence::host_key))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .merge(crate::readiness::routes(
            state.engine.clone(),
            allowed,
            state.config.readiness_cache,
        ))
        .merge(api)
        .fallback(extract::no_route)
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(middleware::map_response(extract::error_shape))
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
                err.detail_mut().scope = Some(needed);
                return err.into_response();
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required",
                )
                .into_response();
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

pub(crate) fn run_id(s: &str) -> ApiResult<RunId> {
    Ok(RunId::parse(s)?)
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII")))
        })
        .transpose()
}

/// How long an SSE keep-alive comment waits by default.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
