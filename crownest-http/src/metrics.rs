//! `GET /metrics`: Prometheus text rendered by `metrics-exporter-prometheus` from what the
//! engine and this crate record through the `metrics` facade.
//!
//! A scrape reads no store: the run gauges are the engine's in-memory counts
//! ([`WorkspaceRuns::runs_by_status`]), rendered as text beside the recorder's output
//! with the engine's own counters; histograms and the other counters live in the recorder.
//! The cost of a scrape depends on the number of label sets, not on the number of runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crownest_core::WorkspaceRuns;
use crownest_core::engine::observe::names;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of every `*_seconds` histogram: from 5 ms (a queue wait, an
/// HTTP request) to an hour (a long run).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first
/// use. When the host application installed another recorder first, crownest's metrics go
/// to that one and `/metrics` shows only the per-engine lines (a warning says so).
pub fn prometheus_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed: crownest's metrics go to it, \
                     /metrics shows only the per-engine lines"
                );
            }
            describe();
            handle
        })
        .clone()
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        names::QUEUE_WAIT,
        Unit::Seconds,
        "Time runs waited in queued for a slot."
    );
    describe_histogram!(
        names::EXTRACTION,
        Unit::Seconds,
        "Time to extract a run's archive into its sandbox."
    );
    describe_histogram!(
        names::COMMAND_DURATION,
        Unit::Seconds,
        "Time from the command's start to its end."
    );
    describe_histogram!(
        names::RUN_DURATION,
        Unit::Seconds,
        "Time from a run's creation to its terminal event."
    );
    describe_counter!(
        names::RUNS_ENDED,
        "Runs ended, by backend, status and failure kind."
    );
    describe_counter!(names::KILL_RUNGS, "Kill ladder rungs carried out.");
    describe_counter!(names::SWEEPS, "Orphan sweeps of a backend.");
    describe_counter!(
        names::ORPHANS_REMOVED,
        "Orphaned sandboxes removed by sweeps."
    );
    describe_counter!(
        names::GC_BLOBS_DELETED,
        "Blobs deleted by garbage collection."
    );
    describe_counter!(
        crate::observe::HTTP_REQUESTS,
        "HTTP requests answered, by route template and status code."
    );
    describe_histogram!(
        crate::observe::HTTP_DURATION,
        Unit::Seconds,
        "Time until the response head."
    );
}

#[derive(Clone)]
pub(crate) struct MetricsState {
    engine: WorkspaceRuns,
    subscribers: Arc<AtomicU64>,
    handle: PrometheusHandle,
}

/// The `/metrics` route, with its own state (merged into the authenticated API).
pub(crate) fn routes<S>(engine: WorkspaceRuns, subscribers: Arc<AtomicU64>) -> Router<S> {
    let state = MetricsState {
        engine,
        subscribers,
        handle: prometheus_handle(),
    };
    Router::new()
        .route("/metrics", get(render))
        .with_state(state)
}

/// Prometheus text (admin scope): the recorder's families (durations, runs ended by
/// failure kind, kill rungs, sweeps, HTTP requests by route and code) and this engine's
/// runs by status and store bytes. A scrape reads no store.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.",
               content_type = "text/plain", body = String))
)]
pub(crate) async fn render(State(s): State<MetricsState>) -> Response {
    use std::fmt::Write as _;
    let mut out = s.handle.render();
    // Values of the engine behind this router (a process may hold several engines), as
    // text beside the recorder's: O(statuses), no store read.
    let mut family = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let runs: Vec<(String, u64)> = s
        .engine
        .runs_by_status()
        .into_iter()
        .map(|(status, n)| (format!("{{status=\"{status}\"}}"), n))
        .collect();
    family(
        names::RUNS,
        "gauge",
        "Runs in the store by status (counted in memory; a scrape reads no store).",
        &runs,
    );
    if let Some(bytes) = s.engine.store_blob_bytes() {
        family(
            names::STORE_BLOB_BYTES,
            "gauge",
            "Bytes of stored blobs, as of start-up or the last gc pass.",
            &[(String::new(), bytes)],
        );
    }
    let m = s.engine.metrics();
    let plain = |v: u64| [(String::new(), v)];
    family(
        "crownest_events_appended_total",
        "counter",
        "Events committed by this server.",
        &plain(m.events_appended),
    );
    family(
        "crownest_bytes_uploaded_total",
        "counter",
        "Archive bytes received.",
        &plain(m.bytes_uploaded),
    );
    family(
        "crownest_runs_started_total",
        "counter",
        "Runs started by this server.",
        &plain(m.runs_started),
    );
    family(
        "crownest_runs_active",
        "gauge",
        "Runs this server drives now (queued to finalizing).",
        &plain(m.runs_active),
    );
    // Warm pools (per engine, like the run gauges).
    let pools = s.engine.pools();
    let (mut size, mut sandboxes, mut idle, mut claims) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (backend, list) in &pools {
        for p in list {
            let at = format!("backend=\"{backend}\",template=\"{}\"", p.template);
            size.push((format!("{{{at}}}"), p.size));
            for (state, n) in [
                ("ready", p.ready),
                ("creating", p.creating),
                ("in_use", p.in_use),
            ] {
                sandboxes.push((format!("{{{at},state=\"{state}\"}}"), n));
            }
            idle.push((format!("{{{at}}}"), p.idle_memory_limit_bytes));
            claims.push((format!("{{{at},result=\"hit\"}}"), p.hits));
            claims.push((format!("{{{at},result=\"miss\"}}"), p.misses));
        }
    }
    if !pools.is_empty() {
        family(
            names::POOL_SIZE,
            "gauge",
            "Warm pool size per template.",
            &size,
        );
        family(
            names::POOL_SANDBOXES,
            "gauge",
            "Warm pool sandboxes by state (ready, creating, in_use).",
            &sandboxes,
        );
        family(
            names::POOL_IDLE_MEMORY,
            "gauge",
            "Memory limits of the ready warm pool sandboxes, summed (their most; idle, each uses about a megabyte).",
            &idle,
        );
        family(
            names::POOL_CLAIMS,
            "counter",
            "Runs that took a warm pool sandbox (hit) or got a fresh one (miss).",
            &claims,
        );
    }
    family(
        "crownest_active_subscribers",
        "gauge",
        "Open SSE event streams.",
        &plain(s.subscribers.load(Ordering::Relaxed)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
