//! `GET /readyz` (no token, like `/healthz`): 200 when the store takes a write and every
//! backend clients may choose is usable, else 503 naming what failed. The answer says
//! nothing a client could not learn from a failed request (backend names are in the
//! `backend_not_allowed` error already), so load balancers and orchestrators need no token.
//!
//! * **Store**: a small fixed blob is written with [`Store::put_blob`](crownest_core::Store::put_blob)
//!   (the same bytes every time: content-addressed, so it is stored once, and a write of it
//!   again still goes through the store's write path). No run names it; garbage
//!   collection deletes it after `blob_grace`, and the next probe writes it again.
//! * **Backends**: [`SandboxBackend::templates`](crownest_core::SandboxBackend::templates)
//!   answers and offers at least one available template (what `crownest doctor` checks).
//! * Each check has [`CHECK_TIMEOUT`]; the answer is cached for
//!   [`HttpConfig::readiness_cache`](crate::HttpConfig::readiness_cache) (5 s), so probes
//!   every second cost one check per interval; concurrent probes share one check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crownest_core::WorkspaceRuns;
use serde::Serialize;

/// How long one check (the store write, one backend) may take before it counts as failed.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer is reused by default ([`crate::HttpConfig::readiness_cache`]).
pub(crate) const CACHE_FOR: Duration = Duration::from_secs(5);

/// One check's result.
#[derive(Debug, Clone, Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    fn of(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self {
                ok: true,
                error: None,
            },
            Err(e) => Self {
                ok: false,
                error: Some(e),
            },
        }
    }
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
struct Report {
    /// `ready` or `unready`.
    status: &'static str,
    store: Check,
    backends: std::collections::BTreeMap<String, Check>,
}

#[derive(Clone)]
pub(crate) struct ReadyState {
    engine: WorkspaceRuns,
    backends: Arc<Vec<String>>,
    cache_for: Duration,
    cache: Arc<tokio::sync::Mutex<Option<(Instant, Report)>>>,
}

/// The `/readyz` route, checking the store and `backends` (those clients may choose).
pub(crate) fn routes<S>(
    engine: WorkspaceRuns,
    backends: Vec<String>,
    cache_for: Duration,
) -> Router<S> {
    let state = ReadyState {
        engine,
        backends: Arc::new(backends),
        cache_for,
        cache: Arc::default(),
    };
    Router::new()
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Readiness (no token): the store takes a write and every backend clients may choose has
/// an available template; answers are cached briefly.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "Ready: `{\"status\":\"ready\",\"store\":{\"ok\":true},\"backends\":{...}}`.",
         body = Object),
        (status = 503, description = "Not ready: the same document with `\"status\":\"unready\"` and `ok: false` plus `error` on what failed.",
         body = Object)
    )
)]
pub(crate) async fn readyz(State(s): State<ReadyState>) -> Response {
    let mut cache = s.cache.lock().await;
    let report = match cache.as_ref() {
        Some((at, report)) if at.elapsed() < s.cache_for => report.clone(),
        _ => {
            let report = check(&s.engine, &s.backends).await;
            *cache = Some((Instant::now(), report.clone()));
            report
        }
    };
    drop(cache);
    let code = if report.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn within<F>(what: &str, fut: F) -> Result<(), String>
where
    F: Future<Output = Result<(), String>>,
{
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn check(engine: &WorkspaceRuns, backends: &[String]) -> Report {
    let store = Check::of(within("the store", probe_store(engine)).await);
    let mut checks = std::collections::BTreeMap::new();
    for name in backends {
        let result = within(name, probe_backend(engine, name)).await;
        checks.insert(name.clone(), Check::of(result));
    }
    let ready = store.ok && checks.values().all(|c| c.ok);
    if !ready {
        tracing::warn!(store = ?store.error, "not ready");
    }
    Report {
        status: if ready { "ready" } else { "unready" },
        store,
        backends: checks,
    }
}

async fn probe_store(engine: &WorkspaceRuns) -> Result<(), String> {
    engine
        .check_store_writable()
        .await
        .map_err(|e| format!("the store refused a write: {}", e.chain()))
}

async fn probe_backend(engine: &WorkspaceRuns, name: &str) -> Result<(), String> {
    let backend = engine
        .backends()
        .get(name)
        .ok_or_else(|| format!("no backend named {name:?} is registered"))?;
    let templates = backend
        .templates()
        .await
        .map_err(|e| format!("listing templates failed: {}", e.chain()))?;
    if templates.iter().any(|t| t.available) {
        Ok(())
    } else {
        let why: Vec<String> = templates
            .iter()
            .map(|t| {
                format!(
                    "{}: {}",
                    t.name,
                    t.reason.as_deref().unwrap_or("unavailable")
                )
            })
            .collect();
        Err(format!("no template is available ({})", why.join("; ")))
    }
}
