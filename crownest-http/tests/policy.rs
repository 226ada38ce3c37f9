//! Server policy over HTTP: which backends a client may choose, tokens with scopes, unknown
//! templates refused at create, and an idempotency key reused with another body.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_core::testing::FakeBackend;
use crownest_core::{EngineConfig, Error, MemoryStore, RunSpec, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, Scope, TokenEntry, TokenSet, router};
use serde_json::{Value, json};

/// A server over a MemoryStore whose engine has a `fake` backend and a fake registered as
/// `process` (the default backend is `fake`).
async fn server(http: HttpConfig) -> String {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .backend(Arc::new(FakeBackend::named("process")))
        .config(EngineConfig {
            default_backend: Some("fake".into()),
            ..EngineConfig::default()
        })
        .open()
        .await
        .unwrap();
    let app = router(engine, http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create(base: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call("POST", &format!("{base}/v1/runs"), token, Some(body), &[]).await
}

#[tokio::test]
async fn process_is_off_unless_named_and_a_disallowed_backend_is_400() {
    // Default policy: every registered backend but `process`.
    let base = server(HttpConfig::default()).await;
    let (status, body) = create(&base, None, json!({"command": ["fake", "exit:0"]})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(
        &base,
        None,
        json!({"command": ["fake", "exit:0"], "backend": "process"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "backend_not_allowed");
    assert_eq!(body["error"]["field"], "backend");
    assert_eq!(body["error"]["backend"], "process");
    assert_eq!(body["error"]["allowed"], json!(["fake"]));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("process"),
        "{body}"
    );
    // The Rust client sees it as rejected input (the CLI's exit 2).
    let client = Client::new(base.clone(), None).unwrap();
    let err = client
        .create_run(&RunSpec::new(["fake", "exit:0"]).with_backend("process"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "backend"),
        "{err:?}"
    );

    // Named, process is allowed; a backend left out of the list is refused, also when it
    // is the engine's default.
    let base = server(HttpConfig::default().with_backends(["process"])).await;
    let (status, body) = create(
        &base,
        None,
        json!({"command": ["fake", "exit:0"], "backend": "process"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["backend"], "process");
    let (status, body) = create(&base, None, json!({"command": ["fake", "exit:0"]})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "backend_not_allowed");
    assert_eq!(body["error"]["backend"], "fake");
    assert_eq!(body["error"]["allowed"], json!(["process"]));
}

#[tokio::test]
async fn tokens_are_checked_by_hash_and_scope() {
    let (reader, reader_entry) = TokenEntry::mint("reader", [Scope::Read]);
    let (submitter, submitter_entry) = TokenEntry::mint("ci", [Scope::Submit]);
    let (both, both_entry) = TokenEntry::mint("ci-full", [Scope::Submit, Scope::Read]);
    let (admin, admin_entry) = TokenEntry::mint("ops", [Scope::Admin]);
    let text = [reader_entry, submitter_entry, both_entry, admin_entry]
        .iter()
        .map(TokenEntry::to_line)
        .collect::<Vec<_>>()
        .join("\n");
    let tokens = TokenSet::parse(&text).unwrap();
    let base = server(
        HttpConfig::default()
            .with_tokens(tokens)
            .with_token("single-admin"),
    )
    .await;
    let run = create(&base, Some(&both), json!({"command": ["fake", "exit:0"]})).await;
    assert_eq!(run.0, 201, "{}", run.1);
    let id = run.1["id"].as_str().unwrap().to_owned();

    let get_run = format!("{base}/v1/runs/{id}");
    let cancel = format!("{base}/v1/runs/{id}/cancel");
    let metrics = format!("{base}/metrics");
    let runs = format!("{base}/v1/runs");
    let reader_hash = crownest_core::Sha256Digest::of(reader.as_bytes()).to_string();
    // (method, url, token, expected status)
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("GET", &get_run, None, 401),
        ("GET", &get_run, Some("not-a-token"), 401),
        // The hash is not the token.
        ("GET", &get_run, Some(&reader_hash), 401),
        ("GET", &get_run, Some(&reader), 200),
        ("GET", &runs, Some(&reader), 200),
        ("GET", &get_run, Some(&submitter), 403),
        ("GET", &metrics, Some(&reader), 403),
        ("GET", &metrics, Some(&both), 403),
        ("GET", &metrics, Some(&admin), 200),
        ("GET", &metrics, Some("single-admin"), 200),
        ("POST", &cancel, Some(&reader), 403),
        ("GET", &get_run, Some(&admin), 200),
        ("GET", &get_run, Some("single-admin"), 200),
    ];
    for (method, url, token, want) in cases {
        let (status, body) = call(method, url, token, None, &[]).await;
        assert_eq!(status, want, "{method} {url} with {token:?}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "forbidden", "{body}");
            assert!(body["error"]["scope"].is_string(), "{body}");
        }
        if want == 401 {
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    // Submit may create and cancel; read may not create.
    let (status, body) = create(&base, Some(&reader), json!({"command": ["fake"]})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["scope"], "submit");
    let (status, body) = create(&base, Some(&submitter), json!({"command": ["fake"]})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call("POST", &cancel, Some(&submitter), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    // /healthz needs nothing.
    let (status, _) = call("GET", &format!("{base}/healthz"), None, None, &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unknown_template_is_400_at_create() {
    let base = server(HttpConfig::default()).await;
    let (status, body) = create(
        &base,
        None,
        json!({"command": ["fake", "exit:0"], "template": "python-nod"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_spec");
    assert_eq!(body["error"]["field"], "template");
    let (status, body) = call("GET", &format!("{base}/v1/runs"), None, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["runs"], json!([]), "no run was stored");
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_422() {
    let base = server(HttpConfig::default()).await;
    let key = [("Idempotency-Key", "deploy-42")];
    let url = format!("{base}/v1/runs");
    let body = json!({"command": ["fake", "exit:0"], "env": {"CI": "true"}});
    let (status, first) = call("POST", &url, None, Some(body.clone()), &key).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = call("POST", &url, None, Some(body), &key).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], first["id"], "the same body gets the same run");
    let other = json!({"command": ["fake", "exit:1"], "env": {"CI": "true"}});
    let (status, err) = call("POST", &url, None, Some(other), &key).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(err["error"]["idempotencyKey"], "deploy-42");
    assert_eq!(err["error"]["runId"], first["id"]);
    // The typed client maps it back.
    let client = Client::new(base, None).unwrap();
    let err = client
        .create_run(&RunSpec::new(["fake", "exit:2"]).with_idempotency_key("deploy-42"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdempotencyKeyReused { key, .. } if key == "deploy-42"),
        "{err:?}"
    );
}
