//! The staged-transfer caps over HTTP: 429 with the limit named (what is open now), while a
//! single upload over its size limit stays 413.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_core::engine::staging::{OPEN_TRANSFERS_PER_RUN, STAGED_BYTES_PER_ENGINE};
use crownest_core::testing::FakeBackend;
use crownest_core::{EngineConfig, Error, MemoryStore, RunSpec, Sha256Digest, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, router};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

async fn server(config: EngineConfig) -> (String, Client) {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .config(config)
        .open()
        .await
        .unwrap();
    let app = router(engine, HttpConfig::default().with_token(TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(base.clone(), Some(TOKEN.into())).unwrap();
    (base, client)
}

/// `POST /v1/runs/{id}/transfers`: the status and the body.
async fn begin(base: &str, run: &str, size_bytes: u64) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/runs/{run}/transfers"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "sizeBytes": size_bytes,
            "sha256": Sha256Digest::of(size_bytes.to_string().as_bytes()),
        }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_fifth_open_transfer_is_429_open_transfers_per_run() {
    let (base, client) = server(EngineConfig::default()).await;
    let run = client
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    let id = run.id.to_string();
    for i in 1..=4 {
        assert_eq!(begin(&base, &id, i).await.0, 201);
    }
    let (status, body) = begin(&base, &id, 5).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "limit_exceeded");
    assert_eq!(body["error"]["limit"], OPEN_TRANSFERS_PER_RUN);
    assert_eq!(body["error"]["max"], 4);
    // The typed client maps it back to the named limit.
    match client
        .begin_transfer(
            &run.id,
            &crownest_core::ArchiveDescriptor {
                size_bytes: 6,
                sha256: Sha256Digest::of(b"6"),
            },
        )
        .await
    {
        Err(Error::LimitExceeded { limit, max }) => {
            assert_eq!((limit, max), (OPEN_TRANSFERS_PER_RUN, 4));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_engines_staged_bytes_cap_is_429_and_one_oversize_upload_stays_413() {
    let (base, client) = server(EngineConfig {
        max_staged_bytes: 1000,
        staged_upload_max_bytes: 800,
        ..EngineConfig::default()
    })
    .await;
    let a = client
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    let b = client
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    assert_eq!(begin(&base, &a.id.to_string(), 700).await.0, 201);
    let (status, body) = begin(&base, &b.id.to_string(), 301).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["limit"], STAGED_BYTES_PER_ENGINE);
    assert_eq!(body["error"]["max"], 1000);
    let (status, body) = begin(&base, &b.id.to_string(), 801).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["limit"], "stagedUploadMaxBytes");
}
