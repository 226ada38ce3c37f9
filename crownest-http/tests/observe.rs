//! What an operator watches: `/metrics` (histograms, counters and gauges with their
//! labels, kept without reading the store), `X-Request-Id` on every answer, and `/readyz`
//! in both states.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::testing::{FakeBackend, tar_gz};
use crownest_core::{EngineConfig, MemoryStore, RunSpec, RunStatus, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, router};

const TOKEN: &str = "observe-token";

struct Server {
    base: String,
    engine: WorkspaceRuns,
    client: Client,
}

/// A server over a memory store with these backends (named uniquely per test: the metrics
/// recorder is global to the test process).
async fn server(backends: &[FakeBackend], http: HttpConfig) -> Server {
    let mut builder = WorkspaceRuns::builder(Arc::new(MemoryStore::new())).config(EngineConfig {
        heartbeat_interval: Duration::from_millis(100),
        subscribe_poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    });
    for b in backends {
        builder = builder.backend(Arc::new(b.clone()));
    }
    let engine = builder.open().await.unwrap();
    let app = router(engine.clone(), http.with_token(TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(base.clone(), Some(TOKEN.into())).unwrap();
    Server {
        base,
        engine,
        client,
    }
}

fn archive() -> Bytes {
    tar_gz(&[("main.py", b"print('hi')\n", 0o644)])
}

fn fake(backend: &str, steps: &[&str]) -> RunSpec {
    let mut argv = vec!["fake".to_owned()];
    argv.extend(steps.iter().map(|s| (*s).to_owned()));
    let mut spec = RunSpec::new(argv);
    spec.backend = Some(backend.to_owned());
    spec
}

async fn scrape(s: &Server) -> String {
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The value of the sample `name{labels...}` (every `k="v"` given must be among its
/// labels, in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_record_runs_by_backend_status_and_failure_without_reading_the_store() {
    let backend = FakeBackend::named("fake-metrics");
    let s = server(&[backend], HttpConfig::default()).await;
    let mut ids = Vec::new();
    for steps in [&["exit:0"][..], &["exit:3"], &["hang"]] {
        let run = s
            .client
            .create_run(&fake("fake-metrics", steps))
            .await
            .unwrap();
        s.client.upload(&run.id, archive()).await.unwrap();
        s.client.start(&run.id).await.unwrap();
        ids.push(run.id);
    }
    // The hanging one is canceled: the kill ladder's first rung is SIGTERM.
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.engine.get(&ids[2]).await.unwrap().status != RunStatus::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    s.client.cancel(&ids[2]).await.unwrap();
    for id in &ids {
        tokio::time::timeout(Duration::from_secs(20), s.engine.wait(id))
            .await
            .unwrap()
            .unwrap();
    }
    // One 404 for the HTTP counter.
    assert!(
        s.client
            .get_run(&crownest_core::RunId::new())
            .await
            .is_err()
    );

    let text = scrape(&s).await;
    let b = ("backend", "fake-metrics");
    for (status, n) in [("succeeded", 1.0), ("failed", 1.0), ("canceled", 1.0)] {
        assert_eq!(
            sample(&text, "crownest_runs", &[("status", status)]),
            Some(n),
            "{status}: {text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "crownest_runs_ended_total",
            &[b, ("status", "failed"), ("failure_kind", "exit_nonzero")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "crownest_runs_ended_total",
            &[b, ("status", "succeeded"), ("failure_kind", "none")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "crownest_kill_rungs_total",
            &[b, ("rung", "SIGTERM"), ("reason", "cancel")]
        ),
        Some(1.0),
        "{text}"
    );
    for status in ["succeeded", "failed", "canceled"] {
        assert_eq!(
            sample(
                &text,
                "crownest_run_duration_seconds_count",
                &[b, ("status", status)]
            ),
            Some(1.0),
            "{status}: {text}"
        );
        assert!(
            sample(
                &text,
                "crownest_run_duration_seconds_bucket",
                &[b, ("status", status), ("le", "+Inf")]
            )
            .is_some(),
            "a histogram, with buckets: {text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "crownest_command_duration_seconds_count",
            &[b, ("status", "succeeded")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "crownest_queue_wait_seconds_count", &[b]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "crownest_extraction_seconds_count",
            &[b, ("result", "ok")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "crownest_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/v1/runs/{id}"),
                ("code", "404")
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "by route template, not path: {text}"
    );
    assert!(
        sample(
            &text,
            "crownest_http_requests_total",
            &[("method", "POST"), ("route", "/v1/runs"), ("code", "201")]
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
    // The counters of earlier versions keep their names.
    for name in [
        "crownest_bytes_uploaded_total",
        "crownest_events_appended_total",
        "crownest_runs_started_total",
        "crownest_active_subscribers",
    ] {
        assert!(sample(&text, name, &[]).is_some(), "{name}: {text}");
    }
    assert_eq!(sample(&text, "crownest_runs_started_total", &[]), Some(3.0));
    assert!(
        text.contains("# TYPE crownest_run_duration_seconds histogram"),
        "{text}"
    );

    // A deletion moves the gauge at once; the store's bytes follow the next gc pass.
    s.client.delete_run(&ids[0]).await.unwrap();
    s.engine.collect_garbage().await.unwrap();
    let text = scrape(&s).await;
    assert_eq!(
        sample(&text, "crownest_runs", &[("status", "succeeded")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "crownest_runs", &[("status", "failed")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "crownest_store_blob_bytes", &[]),
        Some(archive().len() as f64),
        "the archive is stored once: {text}"
    );
}

#[tokio::test]
async fn the_run_gauges_start_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let backend = FakeBackend::named("fake-gauges");
    let first = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(backend.clone()))
        .open()
        .await
        .unwrap();
    for _ in 0..2 {
        first
            .create(fake("fake-gauges", &["exit:0"]))
            .await
            .unwrap();
    }
    // Another engine over the same store (a restart) counts them without a listing.
    let second = WorkspaceRuns::builder(store)
        .backend(Arc::new(backend))
        .open()
        .await
        .unwrap();
    assert_eq!(
        second.runs_by_status().get(&RunStatus::AwaitingArchive),
        Some(&2)
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let s = server(&[FakeBackend::named("fake-ids")], HttpConfig::default()).await;
    let http = reqwest::Client::new();
    let id_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // A sane id is kept.
    let resp = http
        .get(format!("{}/healthz", s.base))
        .header("X-Request-Id", "ci-job-42/step:3")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&resp).as_deref(), Some("ci-job-42/step:3"));
    // An insane one (spaces, too long) is replaced by a generated UUID v7.
    for bad in ["two words".to_owned(), "x".repeat(129)] {
        let resp = http
            .get(format!("{}/healthz", s.base))
            .header("X-Request-Id", bad.as_str())
            .send()
            .await
            .unwrap();
        let id = id_of(&resp).unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.as_bytes()[14], b'7', "a UUID v7: {id}");
    }
    // Generated when absent, and different each time; also on a 401 and on a 404.
    let a = id_of(
        &http
            .get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap(),
    )
    .unwrap();
    let b = id_of(
        &http
            .get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_ne!(a, b);
    let unauthorized = http
        .get(format!("{}/v1/runs", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert!(id_of(&unauthorized).is_some());
    let missing = http
        .get(format!("{}/v1/nope", s.base))
        .bearer_auth(TOKEN)
        .header("X-Request-Id", "lost-1")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(id_of(&missing).as_deref(), Some("lost-1"));
}

#[tokio::test]
async fn readyz_is_503_naming_an_unusable_backend_and_200_when_all_are_usable() {
    let alpha = FakeBackend::named("alpha");
    let beta = FakeBackend::named("beta");
    let http = HttpConfig {
        readiness_cache: Duration::ZERO,
        ..HttpConfig::default()
    }
    .with_backends(["alpha", "beta"]);
    let s = server(&[alpha, beta.clone()], http).await;
    let get = || async {
        // No token: like /healthz.
        let resp = reqwest::get(format!("{}/readyz", s.base)).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["store"]["ok"], true);
    assert_eq!(body["backends"]["alpha"]["ok"], true);
    assert_eq!(body["backends"]["beta"]["ok"], true);

    beta.set_unusable(true);
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unready");
    assert_eq!(body["store"]["ok"], true);
    assert_eq!(body["backends"]["alpha"]["ok"], true);
    assert_eq!(body["backends"]["beta"]["ok"], false);
    let why = body["backends"]["beta"]["error"].as_str().unwrap();
    assert!(why.contains("unusable"), "{why}");

    beta.set_unusable(false);
    let (status, _) = get().await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn readyz_answers_are_cached() {
    let beta = FakeBackend::named("cached");
    let http = HttpConfig {
        readiness_cache: Duration::from_secs(600),
        ..HttpConfig::default()
    }
    .with_backends(["cached"]);
    let s = server(std::slice::from_ref(&beta), http).await;
    let status = || async {
        reqwest::get(format!("{}/readyz", s.base))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status().await, 200);
    beta.set_unusable(true);
    assert_eq!(status().await, 200, "the cached answer, not a new check");
}
