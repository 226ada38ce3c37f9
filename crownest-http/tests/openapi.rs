//! The generated OpenAPI document: the committed copy is current, and it documents what
//! the issue asks of a complete contract (every header, parameter, body and error status).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use crownest_http::ROUTES;
use crownest_http::openapi::{document, json};
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

/// `docs/openapi.json` is the served document byte for byte, so every API change shows in
/// a diff. Regenerate: `CROWNEST_UPDATE_OPENAPI=1 cargo test -p crownest-http --test openapi`.
#[test]
fn the_committed_document_is_current() {
    let path = committed_path();
    if std::env::var_os("CROWNEST_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, json()).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == json(),
        "docs/openapi.json is stale: regenerate it with \
         `CROWNEST_UPDATE_OPENAPI=1 cargo test -p crownest-http --test openapi` and commit it"
    );
}

fn op(method: &str, path: &str) -> &'static Value {
    let op = &document()["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

fn params(method: &str, path: &str) -> Vec<(String, String)> {
    op(method, path)["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["in"].as_str().unwrap().to_owned(),
                        p["name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_route_is_documented_with_its_parameters_and_error_statuses() {
    for (method, path) in ROUTES {
        let op = op(method, path);
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success status"
        );
        // Every path parameter is declared.
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            assert!(
                params(method, path).contains(&("path".into(), name.into())),
                "{method} {path}: path parameter {name} is not declared"
            );
        }
        // Every error status of a JSON-answering route has the one error shape.
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                if *method == "HEAD" && status != "500" && status != "503" {
                    continue;
                }
                // `/readyz` answers 503 with its readiness report (what failed), the
                // document a probe or an operator reads; it is not a refused request.
                if *path == "/readyz" && status == "503" {
                    continue;
                }
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if *path != "/healthz" && *path != "/readyz" {
            for status in ["401", "403", "500", "503"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
            assert_eq!(op["security"][0]["bearer"], serde_json::json!([]));
        }
    }
}

#[test]
fn the_headers_of_the_protocol_are_documented() {
    let has = |method: &str, path: &str, name: &str| {
        assert!(
            params(method, path).contains(&("header".into(), name.into())),
            "{method} {path}: header {name}"
        );
    };
    has("POST", "/v1/runs", "Idempotency-Key");
    has("PUT", "/v1/runs/{id}/archive", "X-Archive-Sha256");
    has("PUT", "/v1/transfers/{tid}", "Content-Digest");
    has("PUT", "/v1/transfers/{tid}", "X-Chunk-Sha256");
    has("GET", "/v1/runs/{id}/events/stream", "Last-Event-ID");
    assert!(
        params("PUT", "/v1/transfers/{tid}").contains(&("query".into(), "offset".into())),
        "the chunk offset"
    );
    let list: Vec<String> = params("GET", "/v1/runs").into_iter().map(|p| p.1).collect();
    for q in [
        "status",
        "backend",
        "label",
        "createdAfter",
        "createdBefore",
        "limit",
        "cursor",
    ] {
        assert!(list.contains(&q.to_owned()), "GET /v1/runs ?{q}");
    }
    let head = &op("HEAD", "/v1/archives/{sha256}")["responses"]["200"]["headers"];
    assert!(head["X-Archive-Size"].is_object(), "{head}");
    let art = &op("GET", "/v1/artifacts/{id}")["responses"]["200"]["headers"];
    assert!(art["X-Artifact-Sha256"].is_object(), "{art}");
}

#[test]
fn request_and_response_bodies_have_schemas() {
    let schemas = document()["components"]["schemas"].as_object().unwrap();
    for name in [
        "RunSpec",
        "RunRecord",
        "ArchiveDescriptor",
        "TransferStatus",
        "Event",
        "EvidenceBundle",
        "DsseEnvelope",
        "ErrorBody",
        "RunPage",
        "EventPage",
        "HostKeyInfo",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    let body = |m: &str, p: &str| op(m, p)["requestBody"]["content"].clone();
    assert_eq!(
        body("POST", "/v1/runs")["application/json"]["schema"]["$ref"],
        "#/components/schemas/RunSpec"
    );
    assert!(body("PUT", "/v1/runs/{id}/archive")["application/octet-stream"].is_object());
    assert!(body("PUT", "/v1/transfers/{tid}")["application/octet-stream"].is_object());
    // A flattened struct is merged into one object (no allOf no object could satisfy).
    let transfer = &schemas["TransferStatus"];
    assert!(transfer["allOf"].is_null(), "{transfer}");
    assert!(transfer["properties"]["sha256"].is_object(), "{transfer}");
    let stream = &op("GET", "/v1/runs/{id}/events/stream")["responses"]["200"]["content"];
    assert!(stream["text/event-stream"].is_object(), "{stream}");
}

#[test]
fn each_secured_operation_names_its_scope() {
    for (method, path) in ROUTES {
        if *path == "/healthz" || *path == "/readyz" {
            continue;
        }
        let want = crownest_http::Scope::required_for(
            &axum::http::Method::from_bytes(method.as_bytes()).unwrap(),
            path,
        );
        assert_eq!(
            op(method, path)["x-crownest-scope"],
            want.as_str(),
            "{method} {path}"
        );
    }
}
