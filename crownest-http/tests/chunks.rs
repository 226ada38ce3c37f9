//! Checksummed chunks of staged transfers: a chunk whose bytes do not match its declared
//! digest, or that conflicts with a chunk already received, is 409 and changes nothing; an
//! early `complete` is 409 with the missing ranges as JSON; the Rust client sends the digest.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz};
use crownest_core::{EngineConfig, MemoryStore, RunSpec, RunStatus, Sha256Digest, WorkspaceRuns};
use crownest_http::digest::content_digest_of;
use crownest_http::{Client, HttpConfig, router};
use serde_json::{Value, json};

const CHUNK: u64 = 1024;

struct Server {
    base: String,
    client: Client,
    /// `Content-Digest` of every chunk PUT the server received.
    seen_digests: Arc<Mutex<Vec<String>>>,
}

async fn server() -> Server {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .config(EngineConfig {
            chunk_size_bytes: CHUNK,
            direct_upload_max_bytes: 16,
            ..EngineConfig::default()
        })
        .open()
        .await
        .unwrap();
    let seen_digests = Arc::new(Mutex::new(Vec::new()));
    let seen = seen_digests.clone();
    let app = router(engine, HttpConfig::default()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                if req.method() == axum::http::Method::PUT
                    && req.uri().path().starts_with("/v1/transfers/")
                {
                    let v = req
                        .headers()
                        .get("content-digest")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().unwrap().push(v);
                }
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(base.clone(), None).unwrap();
    Server {
        base,
        client,
        seen_digests,
    }
}

/// A valid archive of a few chunks (incompressible content).
fn archive() -> Bytes {
    let mut x: u32 = 12345;
    let noise: Vec<u8> = (0..3 * CHUNK)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    tar_gz(&[("noise.bin", &noise, 0o644)])
}

fn chunk_of(a: &Bytes, index: u64) -> Bytes {
    let start = usize::try_from(index * CHUNK).unwrap();
    let end = (start + usize::try_from(CHUNK).unwrap()).min(a.len());
    a.slice(start..end)
}

async fn put(
    base: &str,
    tid: &str,
    offset: u64,
    body: Bytes,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .put(format!("{base}/v1/transfers/{tid}"))
        .query(&[("offset", offset)])
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn status(base: &str, tid: &str) -> Value {
    reqwest::get(format!("{base}/v1/transfers/{tid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn complete(base: &str, tid: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/transfers/{tid}/complete"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn mismatching_and_conflicting_chunks_are_409_and_change_nothing() {
    let s = server().await;
    let a = archive();
    assert!(a.len() as u64 > 2 * CHUNK, "{}", a.len());
    let run = s
        .client
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    let t = s
        .client
        .begin_transfer(&run.id, &descriptor_of(&a))
        .await
        .unwrap();
    let tid = t.transfer_id.to_string();
    let chunks = a.len().div_ceil(usize::try_from(CHUNK).unwrap()) as u64;

    // A chunk whose bytes are not what its digest says: refused, nothing stored.
    let good = chunk_of(&a, 0);
    let mut corrupt = good.to_vec();
    corrupt[7] ^= 1;
    let corrupt = Bytes::from(corrupt);
    let good_digest = Sha256Digest::of(&good);
    for header in [
        ("Content-Digest", content_digest_of(&good_digest)),
        ("X-Chunk-Sha256", good_digest.to_string()),
    ] {
        let (code, body) = put(&s.base, &tid, 0, corrupt.clone(), &[header]).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["error"]["code"], "chunk_rejected");
        assert_eq!(body["error"]["reason"], "digest_mismatch");
        assert_eq!(body["error"]["offset"], 0);
        assert_eq!(status(&s.base, &tid).await["bytesReceived"], 0);
    }
    // A malformed digest header is a bad request.
    let (code, body) = put(
        &s.base,
        &tid,
        0,
        good.clone(),
        &[("Content-Digest", "sha-256=:nope:".into())],
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // The right bytes with their digest are stored.
    let (code, body) = put(
        &s.base,
        &tid,
        0,
        good.clone(),
        &[("Content-Digest", content_digest_of(&good_digest))],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // Other bytes for it later (with a digest that matches them, or none): a conflict, and
    // the stored chunk stays.
    for headers in [
        vec![(
            "Content-Digest",
            content_digest_of(&Sha256Digest::of(&corrupt)),
        )],
        vec![],
    ] {
        let (code, body) = put(&s.base, &tid, 0, corrupt.clone(), &headers).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["error"]["code"], "chunk_rejected");
        assert_eq!(body["error"]["reason"], "conflict");
    }
    // The same bytes again are fine (a resend after a dropped connection).
    let (code, _) = put(&s.base, &tid, 0, good, &[]).await;
    assert_eq!(code, 200);

    // An early complete: 409 with the missing ranges as JSON; the transfer is kept.
    let (code, body) = complete(&s.base, &tid).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "transfer_incomplete");
    assert_eq!(body["error"]["transferId"], tid.as_str());
    assert_eq!(body["error"]["missing"], json!([[CHUNK, a.len()]]));
    assert!(
        !body["error"]["message"].as_str().unwrap().contains("Some("),
        "{body}"
    );
    for i in 1..chunks {
        let c = chunk_of(&a, i);
        let d = content_digest_of(&Sha256Digest::of(&c));
        let (code, body) = put(&s.base, &tid, i * CHUNK, c, &[("Content-Digest", d)]).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = complete(&s.base, &tid).await;
    assert_eq!(code, 200, "the conflicting chunk changed nothing: {body}");
    assert_eq!(body["status"], "archive_ready");
}

#[tokio::test]
async fn the_client_sends_each_chunk_with_its_digest() {
    let mut s = server().await;
    // Anything over 16 bytes goes staged.
    s.client.direct_upload_max_bytes = 16;
    let a = archive();
    let run = s
        .client
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    let ready = s.client.upload(&run.id, a.clone()).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    let seen = s.seen_digests.lock().unwrap().clone();
    let chunks = a.len().div_ceil(usize::try_from(CHUNK).unwrap());
    assert_eq!(seen.len(), chunks, "a staged upload: {seen:?}");
    let mut want: Vec<String> = (0..chunks as u64)
        .map(|i| content_digest_of(&Sha256Digest::of(&chunk_of(&a, i))))
        .collect();
    let mut got = seen;
    want.sort();
    got.sort();
    assert_eq!(got, want);
}
