//! One error shape: every engine error survives server → client as the same error, every
//! refusal (the framework's own included) is an `ErrorBody`, and no message carries Rust
//! debug text.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::response::IntoResponse as _;
use crownest_core::capability::Capability;
use crownest_core::testing::FakeBackend;
use crownest_core::{
    ChunkRejectReason, EngineConfig, Error, MemoryStore, RejectReason, RunSpec, RunStatus,
    WorkspaceRuns,
};
use crownest_http::{ApiError, Client, ErrorBody, HttpConfig, router};

const TOKEN: &str = "test-token";

/// One error of every engine variant.
fn every_engine_error() -> Vec<Error> {
    vec![
        Error::not_found("run", "run_x"),
        Error::not_found("transfer", "xfer_x"),
        Error::invalid("cwd", "must be relative"),
        Error::InvalidTransition {
            from: RunStatus::Succeeded,
            input: "cancel",
        },
        Error::InvalidTransition {
            from: RunStatus::Running,
            input: "delete",
        },
        Error::rejected(
            RejectReason::ParentTraversal,
            Some("../evil.sh".into()),
            "leaves the workspace",
        ),
        Error::rejected(
            RejectReason::DigestMismatch,
            None,
            "not the declared digest",
        ),
        Error::rejected(RejectReason::TooLarge, None, "over the limit"),
        Error::LimitExceeded {
            limit: "directUploadMaxBytes",
            max: 1024,
        },
        Error::LimitExceeded {
            limit: crownest_core::engine::staging::OPEN_TRANSFERS_PER_RUN,
            max: 4,
        },
        Error::Conflict {
            message: "someone else".into(),
        },
        Error::NotTerminal {
            run_id: "run_x".into(),
        },
        Error::NotEnforceable {
            field: "limits.memoryBytes".into(),
            capability: Capability::MemoryLimit,
            backend: "process".into(),
        },
        Error::Unsupported {
            operation: "keep".into(),
            backend: "wasm".into(),
        },
        Error::backend("docker", std::io::Error::other("daemon gone")),
        Error::store("writing the run", std::io::Error::other("disk full")),
        Error::io("reading the archive", std::io::Error::other("eof")),
        Error::ChunkRejected {
            offset: 8,
            reason: ChunkRejectReason::DigestMismatch,
            message: "the bytes do not have the digest sent".into(),
        },
        Error::TransferIncomplete {
            transfer_id: "xfer_x".into(),
            missing: vec![[0, 8], [16, 24]],
        },
        Error::IdempotencyKeyReused {
            key: "k1".into(),
            run_id: "run_x".into(),
        },
        Error::ShuttingDown,
        Error::UnsafeWorkRoot {
            path: "/tmp/x".into(),
            reason: "writable by others".into(),
        },
    ]
}

/// The variants that carry a boxed source: compared by code and message (the source is the
/// server's secret: it stays in its log).
fn has_source(e: &Error) -> bool {
    matches!(
        e,
        Error::Backend { .. } | Error::Store { .. } | Error::Io { .. }
    )
}

async fn wire(err: ApiError) -> (u16, Vec<u8>, Option<String>) {
    let resp = err.into_response();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec();
    (status, body, ct)
}

#[tokio::test]
async fn every_engine_error_survives_server_to_client() {
    for (e, copy) in every_engine_error().into_iter().zip(every_engine_error()) {
        let sent = ApiError::from(copy);
        let want_body = sent.body();
        let (status, bytes, ct) = wire(sent).await;
        assert_eq!(ct.as_deref(), Some("application/json"), "{e}");
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, want_body, "the body is what the server meant: {e}");
        let back = ErrorBody::from_response(status, &bytes).to_error(status);
        assert_eq!(back.code(), e.code(), "{e}");
        assert_eq!(back.to_string(), e.to_string(), "{e}");
        if !has_source(&e) {
            assert_eq!(
                format!("{back:?}"),
                format!("{e:?}"),
                "every field survives"
            );
        }
    }
}

#[tokio::test]
async fn the_http_layers_own_codes_survive_too() {
    use axum::http::StatusCode;
    let cases = [
        ApiError::bad_request("limit must be 1 to 500"),
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ),
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "no"),
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "too big"),
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "json",
        ),
        ApiError::new(StatusCode::LENGTH_REQUIRED, "length_required", "length"),
    ];
    for sent in cases {
        let want = sent.body();
        let (status, bytes, _) = wire(sent).await;
        let back = ErrorBody::from_response(status, &bytes).to_error(status);
        // Without an engine variant of its own, the body rides along whole as the source.
        assert_eq!(ErrorBody::of_error(&back), Some(&want), "{back}");
    }
    // Mapped onto the engine's variants the client's callers match on.
    let mut policy = ApiError::new(StatusCode::BAD_REQUEST, "backend_not_allowed", "no");
    policy.detail_mut().field = Some("backend".into());
    let (status, bytes, _) = wire(policy).await;
    match ErrorBody::from_response(status, &bytes).to_error(status) {
        Error::InvalidSpec { field, .. } => assert_eq!(field, "backend"),
        other => panic!("{other:?}"),
    }
    // A body that is not the shape (a proxy's page) still gives a useful error.
    let proxy = ErrorBody::from_response(502, b"<html>bad gateway</html>");
    assert_eq!(proxy.error.code, "http_502");
    assert!(proxy.error.message.contains("bad gateway"));
}

struct Server {
    base: String,
    client: Client,
}

async fn server() -> Server {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .config(EngineConfig {
            chunk_size_bytes: 1024,
            ..EngineConfig::default()
        })
        .open()
        .await
        .unwrap();
    let app = router(engine, HttpConfig::default().with_token(TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(base.clone(), Some(TOKEN.into())).unwrap();
    Server { base, client }
}

/// Rust debug text: `Some(..)`, `None`, `Ok(..)`, `Err(..)`, a struct dump (`Name { field:`)
/// or a tuple-struct dump (`Name("..")`).
fn debug_text(message: &str) -> Option<String> {
    for needle in [
        "Some(",
        "Ok(",
        "Err(",
        "None",
        "\\\"",
        "Error {",
        "Rejection",
    ] {
        if message.contains(needle) {
            return Some(needle.to_owned());
        }
    }
    let b = message.as_bytes();
    for (i, w) in message
        .split(' ')
        .collect::<Vec<_>>()
        .windows(2)
        .enumerate()
    {
        let (name, next) = (w[0], w[1]);
        let struct_like = name.chars().next().is_some_and(char::is_uppercase)
            && name.chars().all(char::is_alphanumeric)
            && next == "{";
        if struct_like {
            return Some(format!("{name} {{ (word {i})"));
        }
    }
    for (i, c) in b.iter().enumerate() {
        if *c == b'(' && i > 0 && b[i - 1].is_ascii_alphanumeric() {
            let word: String = message[..i]
                .rsplit(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("")
                .to_owned();
            if word.chars().next().is_some_and(char::is_uppercase) && b.get(i + 1) == Some(&b'"') {
                return Some(format!("{word}(\""));
            }
        }
    }
    None
}

#[test]
fn the_debug_text_scanner_finds_debug_text() {
    assert!(debug_text("value was Some(3)").is_some());
    assert!(debug_text("Err(Io { kind: NotFound })").is_some());
    assert!(debug_text("got Config { path: \"x\" }").is_some());
    assert!(debug_text("got RunId(\"run_x\")").is_some());
    assert!(debug_text("limit must be 1 to 500").is_none());
    assert!(debug_text("invalid cwd: must be relative (see docs)").is_none());
}

/// What each refusal answers: status, code, and the body is the one shape without debug
/// text.
#[tokio::test]
async fn every_refusal_is_the_one_shape_without_debug_text() {
    let s = server().await;
    let run = s.client.create_run(&RunSpec::new(["fake"])).await.unwrap();
    let tr = s
        .client
        .begin_transfer(
            &run.id,
            &crownest_core::ArchiveDescriptor {
                size_bytes: 4096,
                sha256: crownest_core::Sha256Digest::of(b"x"),
            },
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = &s.base;
    let url = |p: &str| format!("{base}{p}");
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(TOKEN);
    let json = |r: reqwest::RequestBuilder, b: &str| {
        r.header("content-type", "application/json")
            .body(b.to_owned())
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        // The framework's refusals.
        (auth(http.get(url("/v1/nope"))), 404, "no_route"),
        (http.get(url("/nope")), 404, "no_route"),
        (auth(http.patch(url("/v1/runs"))), 405, "method_not_allowed"),
        (
            auth(http.post(url(&format!("/v1/runs/{}", run.id)))),
            405,
            "method_not_allowed",
        ),
        (auth(http.post(url("/healthz"))), 405, "method_not_allowed"),
        (
            json(auth(http.post(url("/v1/runs"))), "{not json"),
            400,
            "bad_request",
        ),
        (
            json(
                auth(http.post(url("/v1/runs"))),
                r#"{"command": "not-a-list"}"#,
            ),
            400,
            "bad_request",
        ),
        (
            json(
                auth(http.post(url("/v1/runs"))),
                r#"{"command": ["x"], "nope": 1}"#,
            ),
            400,
            "bad_request",
        ),
        (
            auth(http.post(url("/v1/runs")))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            auth(http.post(url("/v1/runs"))),
            415,
            "unsupported_media_type",
        ),
        (
            json(
                auth(http.post(url("/v1/runs"))),
                &format!(r#"{{"command": ["{}"]}}"#, "x".repeat(2 << 20)),
            ),
            413,
            "too_large",
        ),
        (
            auth(http.put(url(&format!("/v1/transfers/{}?offset=0", tr.transfer_id))))
                .body(vec![0u8; 4096]),
            413,
            "too_large",
        ),
        (
            auth(http.put(url(&format!("/v1/transfers/{}?offset=abc", tr.transfer_id)))).body("x"),
            400,
            "bad_request",
        ),
        (
            auth(http.put(url(&format!("/v1/transfers/{}", tr.transfer_id)))).body("x"),
            400,
            "bad_request",
        ),
        (
            auth(http.get(url(&format!("/v1/runs/{}/events?afterSeq=-1", run.id)))),
            400,
            "bad_request",
        ),
        (
            auth(http.get(url(&format!("/v1/runs/{}/events/stream?limit=x", run.id)))),
            400,
            "bad_request",
        ),
        (
            auth(http.get(url(&format!("/v1/runs/{}/evidence?format=nope", run.id)))),
            400,
            "bad_request",
        ),
        (auth(http.get(url("/v1/runs?limit=0"))), 400, "bad_request"),
        (
            auth(http.get(url("/v1/runs?limit=501"))),
            400,
            "bad_request",
        ),
        (
            auth(http.get(url("/v1/runs?color=red"))),
            400,
            "bad_request",
        ),
        (
            auth(http.get(url("/v1/runs?createdAfter=yesterday"))),
            400,
            "bad_request",
        ),
        // The handlers' own.
        (http.get(url("/v1/runs")), 401, "unauthorized"),
        (auth(http.get(url("/v1/runs/run_nope"))), 404, "not_found"),
        (auth(http.get(url("/v1/runs/..%2Fetc"))), 404, "not_found"),
        (
            auth(http.get(url(&format!("/v1/runs/{}/evidence", run.id)))),
            409,
            "not_terminal",
        ),
        (
            auth(http.post(url(&format!("/v1/runs/{}/start", run.id)))),
            409,
            "invalid_transition",
        ),
        (
            auth(http.put(url(&format!("/v1/runs/{}/archive", run.id)))).body("x"),
            400,
            "bad_request",
        ),
        (
            auth(http.put(url(&format!("/v1/runs/{}/archive", run.id))))
                .header("x-archive-sha256", "zz")
                .body("x"),
            400,
            "invalid_spec",
        ),
        (
            auth(http.get(url(&format!("/v1/runs/{}/events/stream", run.id))))
                .header("last-event-id", "x"),
            400,
            "bad_request",
        ),
        (auth(http.get(url("/v1/host-key"))), 404, "no_host_key"),
        (
            json(
                auth(http.post(url(&format!("/v1/runs/{}/archive/attach", run.id)))),
                r#"{"sizeBytes": 1, "sha256": "nope"}"#,
            ),
            400,
            "bad_request",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let resp = http.execute(req).await.unwrap();
        let status = resp.status().as_u16();
        let allow = resp.headers().get("allow").cloned();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, want_status, "{what}: {text}");
        assert_eq!(ct.as_deref(), Some("application/json"), "{what}: {text}");
        let body: ErrorBody = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{what}: not an ErrorBody ({e}): {text}"));
        assert_eq!(body.error.code, want_code, "{what}: {text}");
        assert!(!body.error.message.is_empty(), "{what}");
        if let Some(found) = debug_text(&body.error.message) {
            panic!("{what}: debug text {found:?} in {:?}", body.error.message);
        }
        if status == 405 {
            let allow = allow.unwrap_or_else(|| panic!("{what}: 405 without Allow"));
            assert!(!allow.is_empty(), "{what}");
            assert!(
                body.error.allowed.as_ref().is_some_and(|a| !a.is_empty()),
                "{what}: {text}"
            );
        }
    }
}
