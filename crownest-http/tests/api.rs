//! The API through a real HTTP client against a server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::event::{Event, EventKind};
use crownest_core::testing::{FakeBackend, descriptor_of, tar_gz, tar_gz_raw_name};
use crownest_core::{EngineConfig, Error, MemoryStore, RunSpec, RunStatus, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, ROUTES, router};
use futures::StreamExt as _;

const TOKEN: &str = "test-token";

struct Server {
    base: String,
    engine: WorkspaceRuns,
    client: Client,
}

async fn server_with(config: EngineConfig) -> Server {
    server_with_http(config, HttpConfig::default()).await
}

async fn server_with_http(config: EngineConfig, http: HttpConfig) -> Server {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .config(config)
        .open()
        .await
        .unwrap();
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

fn fast() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(100),
        subscribe_poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    }
}

async fn server() -> Server {
    server_with(fast()).await
}

fn fake(steps: &[&str]) -> RunSpec {
    let mut argv = vec!["fake".to_owned()];
    argv.extend(steps.iter().map(|s| (*s).to_owned()));
    RunSpec::new(argv)
}

fn archive() -> Bytes {
    tar_gz(&[("main.py", b"print('hi')\n", 0o644)])
}

#[tokio::test]
async fn full_lifecycle() {
    let s = server().await;
    let run = s
        .client
        .create_run(
            &fake(&["out:hello", "write:out.txt=artifact-bytes", "exit:0"])
                .with_artifact("out.txt", true),
        )
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::AwaitingArchive);
    let ready = s.client.upload(&run.id, archive()).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    s.client.start(&run.id).await.unwrap();
    let events: Vec<Event> = s
        .client
        .events(&run.id, 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(events.last().unwrap().kind.is_terminal());
    assert_eq!(
        events,
        s.client.list_events(&run.id, 0, 1000).await.unwrap()
    );
    let done = s.client.get_run(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    let evidence = s.client.evidence(&run.id).await.unwrap();
    evidence.verify_events(&events).unwrap();
    let statement = s.client.evidence_in_toto(&run.id).await.unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        evidence.artifacts[0].sha256.as_str()
    );
    let (bytes, sha) = s
        .client
        .artifact(&done.artifacts[0].artifact_id)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"artifact-bytes");
    assert_eq!(sha.as_deref(), Some(done.artifacts[0].sha256.as_str()));
    let page = s
        .client
        .list_runs(Some(RunStatus::Succeeded), 10, None)
        .await
        .unwrap();
    assert!(page.runs.iter().any(|r| r.id == run.id));
}

#[tokio::test]
async fn idempotency_key_header_is_honoured() {
    let s = server().await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = http
            .post(format!("{}/v1/runs", s.base))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "same-key")
            .json(&serde_json::json!({"command": ["fake", "exit:0"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: serde_json::Value = resp.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn auth_is_required_except_for_healthz() {
    let s = server().await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (method, path) in [
        ("GET", "/v1/runs"),
        ("POST", "/v1/runs"),
        ("GET", "/metrics"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = http
            .request(m.clone(), format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} without a token");
        let resp = http
            .request(m, format!("{}{path}", s.base))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} with a wrong token");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn uploads_are_verified_and_limited() {
    let mut config = fast();
    config.direct_upload_max_bytes = 1024;
    let s = server_with(config).await;
    let http = reqwest::Client::new();
    let run = s.client.create_run(&fake(&["exit:0"])).await.unwrap();
    let a = archive();
    // Digest mismatch → 422 naming the reason.
    let resp = http
        .put(format!("{}/v1/runs/{}/archive", s.base, run.id))
        .bearer_auth(TOKEN)
        .header("X-Archive-Sha256", "00".repeat(32))
        .body(a.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["reason"], "digest_mismatch");
    // Hostile archive → 422 naming the entry.
    let hostile = tar_gz_raw_name("../evil.sh", b"x");
    let err = s
        .client
        .upload_archive(&run.id, &descriptor_of(&hostile), hostile)
        .await
        .unwrap_err();
    match err {
        Error::ArchiveRejected { entry, .. } => assert_eq!(entry.as_deref(), Some("../evil.sh")),
        other => panic!("{other:?}"),
    }
    // Over the direct limit → 413, before the body is read.
    let big = Bytes::from(vec![0u8; 4096]);
    let resp = http
        .put(format!("{}/v1/runs/{}/archive", s.base, run.id))
        .bearer_auth(TOKEN)
        .header("X-Archive-Sha256", descriptor_of(&big).sha256.as_str())
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Malformed JSON and unknown fields → 400 / 422 with the error shape.
    for body in ["{not json", r#"{"command": "not-a-list"}"#] {
        let resp = http
            .post(format!("{}/v1/runs", s.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{body}: {}", resp.status());
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v["error"]["code"].is_string());
    }
    // Oversize JSON body → 413.
    let huge = format!(r#"{{"command": ["{}"]}}"#, "x".repeat(2 * 1024 * 1024));
    let resp = http
        .post(format!("{}/v1/runs", s.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // The run is still awaiting its archive; the dedupe route knows nothing of the bad bytes.
    assert_eq!(
        s.client.get_run(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    assert_eq!(
        s.client
            .has_archive(&descriptor_of(&a).sha256)
            .await
            .unwrap(),
        None
    );
    // Path values never reach the filesystem: garbage ids are 404s.
    let resp = http
        .get(format!("{}/v1/runs/..%2F..%2Fetc", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn staged_upload_out_of_order_and_resumed_after_a_drop() {
    let mut config = fast();
    config.chunk_size_bytes = 256;
    let s = server_with(config).await;
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("f{i}.bin"),
                (0..500).map(|j| ((i * 31 + j * 7) % 256) as u8).collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice(), 0o644))
        .collect();
    let a = tar_gz(&refs);
    let run = s.client.create_run(&fake(&["exit:0"])).await.unwrap();
    let desc = descriptor_of(&a);
    let t = s.client.begin_transfer(&run.id, &desc).await.unwrap();
    assert_eq!(t.chunk_size_bytes, 256);
    let n = a.len().div_ceil(256);
    // Send odd chunks backwards, then "drop the connection" (stop), then resume from status.
    for i in (0..n).rev().filter(|i| i % 2 == 1) {
        let c = a.slice(i * 256..((i + 1) * 256).min(a.len()));
        s.client
            .put_chunk(&t.transfer_id, (i * 256) as u64, c)
            .await
            .unwrap();
    }
    let status = s.client.transfer_status(&t.transfer_id).await.unwrap();
    assert!(!status.complete);
    assert_eq!(status.missing.len(), n.div_ceil(2));
    for [start, end] in status.missing {
        let c = a.slice(start as usize..end as usize);
        s.client
            .put_chunk(&t.transfer_id, start, c.clone())
            .await
            .unwrap();
        s.client.put_chunk(&t.transfer_id, start, c).await.unwrap(); // idempotent
    }
    let ready = s.client.complete_transfer(&t.transfer_id).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    // And the automatic path: the client picks staged transfer above its direct limit.
    let mut client = s.client.clone();
    client.direct_upload_max_bytes = 100;
    let run2 = client.create_run(&fake(&["exit:0"])).await.unwrap();
    let again = tar_gz(&[("other.txt", b"a different archive", 0o644)]);
    let ready = client.upload(&run2.id, again).await.unwrap();
    assert_eq!(
        ready.archive.unwrap().upload,
        crownest_core::UploadKind::Staged
    );
    // Dedupe: the first archive is attached by digest.
    let run3 = client.create_run(&fake(&["exit:0"])).await.unwrap();
    let ready = client.upload(&run3.id, a).await.unwrap();
    assert_eq!(
        ready.archive.unwrap().upload,
        crownest_core::UploadKind::Existing
    );
}

#[tokio::test]
async fn upload_file_streams_from_disk_and_refuses_a_file_that_is_not_the_declared_one() {
    let mut config = fast();
    config.chunk_size_bytes = 256;
    let s = server_with(config).await;
    // ~6 KB of poorly compressible data: some 25 chunks of 256 bytes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..6000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let a = tar_gz(&[("noise.bin", &noise, 0o644)]);
    let desc = descriptor_of(&a);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tgz");
    std::fs::write(&path, &a).unwrap();

    // Staged: more than the client's direct limit; progress ends at the whole size.
    let mut client = s.client.clone();
    client.direct_upload_max_bytes = 100;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let progress: crownest_http::UploadProgress = {
        let seen = seen.clone();
        Arc::new(move |n| seen.lock().unwrap().push(n))
    };
    let run = client.create_run(&fake(&["exit:0"])).await.unwrap();
    let ready = client
        .upload_file(&run.id, &path, Some(&desc), Some(progress))
        .await
        .unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    let info = ready.archive.unwrap();
    assert_eq!(info.upload, crownest_core::UploadKind::Staged);
    assert_eq!(
        (info.size_bytes, &info.sha256),
        (desc.size_bytes, &desc.sha256)
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= a.len().div_ceil(256), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&desc.size_bytes));

    // Direct: the file is streamed as the request body.
    let b = tar_gz(&[("small.txt", b"streamed from a file", 0o644)]);
    let path_b = dir.path().join("b.tgz");
    std::fs::write(&path_b, &b).unwrap();
    let run = s.client.create_run(&fake(&["exit:0"])).await.unwrap();
    let ready = s
        .client
        .upload_file(&run.id, &path_b, None, None)
        .await
        .unwrap();
    let info = ready.archive.unwrap();
    assert_eq!(info.upload, crownest_core::UploadKind::Direct);
    assert_eq!(info.sha256, descriptor_of(&b).sha256);

    // A declaration the file does not match is refused before anything is sent — even
    // when the declared digest names an archive the server has (no attach by mistake).
    let uploaded_before = s.engine.metrics().bytes_uploaded;
    let run = s.client.create_run(&fake(&["exit:0"])).await.unwrap();
    let same_size = crownest_core::ArchiveDescriptor {
        size_bytes: b.len() as u64,
        sha256: desc.sha256.clone(),
    };
    use crownest_core::RejectReason::{DigestMismatch, SizeMismatch};
    for (declared, expected) in [(&desc, SizeMismatch), (&same_size, DigestMismatch)] {
        let err = s
            .client
            .upload_file(&run.id, &path_b, Some(declared), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ArchiveRejected { reason, .. } if *reason == expected),
            "{err:?}"
        );
    }
    assert_eq!(s.engine.metrics().bytes_uploaded, uploaded_before);
    let record = s.client.get_run(&run.id).await.unwrap();
    assert_eq!(record.status, RunStatus::AwaitingArchive);
    assert!(record.archive.is_none());

    // A missing file is an I/O error naming it.
    let err = s
        .client
        .upload_file(&run.id, &dir.path().join("absent.tgz"), None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("absent.tgz"), "{err}");
}

#[tokio::test]
async fn evidence_is_signed_by_the_host_key_when_the_server_has_one() {
    use crownest_core::signing::{HostKey, SignatureError};
    let key = HostKey::from_seed([42; 32]);
    let public = key.public_key();
    let s = server_with_http(fast(), HttpConfig::default().with_signing_key(key)).await;
    let run = s
        .client
        .create_run(&fake(&["write:out.txt=signed", "exit:0"]).with_artifact("out.txt", true))
        .await
        .unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    s.client.start(&run.id).await.unwrap();
    let _: Vec<_> = s.client.events(&run.id, 0).collect().await;

    assert_eq!(s.client.host_key().await.unwrap(), Some(public));
    let envelope = s.client.evidence_dsse(&run.id).await.unwrap();
    assert_eq!(envelope.payload_type, "application/vnd.in-toto+json");
    let statement = envelope.verify(&public).unwrap();
    assert_eq!(
        statement,
        s.client.evidence_in_toto(&run.id).await.unwrap(),
        "the signed statement is the in-toto view"
    );
    let other = HostKey::from_seed([43; 32]).public_key();
    assert!(matches!(
        envelope.verify(&other),
        Err(SignatureError::NoSignatureByKey { .. })
    ));

    // Without a host key: 404 no_host_key, and no public key.
    let plain = server().await;
    let run = plain.client.create_run(&fake(&["exit:0"])).await.unwrap();
    plain.client.upload(&run.id, archive()).await.unwrap();
    plain.client.start(&run.id).await.unwrap();
    let _: Vec<_> = plain.client.events(&run.id, 0).collect().await;
    assert!(matches!(
        plain.client.evidence_dsse(&run.id).await,
        Err(Error::NotFound {
            kind: "host key",
            ..
        })
    ));
    assert_eq!(plain.client.host_key().await.unwrap(), None);
}

#[tokio::test]
async fn a_client_refuses_a_chunk_size_it_would_have_to_hold_in_memory() {
    let mut config = fast();
    config.chunk_size_bytes = crownest_http::MAX_CHUNK_BYTES + 1;
    let s = server_with(config).await;
    let mut client = s.client.clone();
    client.direct_upload_max_bytes = 10;
    let run = client.create_run(&fake(&["exit:0"])).await.unwrap();
    let err = client.upload(&run.id, archive()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { message } if message.contains("chunks of")),
        "{err:?}"
    );
}

/// Reads raw SSE blocks from a response until `stop` events, returning their ids.
async fn read_sse(resp: reqwest::Response, stop: Option<usize>) -> Vec<(u64, String, Event)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            let mut id = None;
            let mut kind = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, kind, serde_json::from_str(&data).unwrap()));
                if stop.is_some_and(|n| out.len() >= n) {
                    return out;
                }
            }
        }
    }
    out
}

/// An EventSource reconnects after every normal close with `Last-Event-ID` = the last seq
/// it saw: for a finished run that is the terminal seq, and the answer must be 204 (which
/// stops it), not a stream that stays open with keep-alives.
#[tokio::test]
async fn sse_of_a_finished_run_resumed_at_its_end_is_204_and_the_client_ends() {
    let s = server().await;
    let run = s
        .client
        .create_run(&fake(&["out:x", "exit:0"]))
        .await
        .unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    s.client.start(&run.id).await.unwrap();
    let all: Vec<Event> = tokio::time::timeout(
        Duration::from_secs(30),
        s.client.events(&run.id, 0).map(|e| e.unwrap()).collect(),
    )
    .await
    .unwrap();
    let last = all.last().unwrap().seq;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/runs/{}/events/stream", s.base, run.id);
    let requests = [
        http.get(&url)
            .bearer_auth(TOKEN)
            .header("Last-Event-ID", last.to_string()),
        http.get(&url)
            .bearer_auth(TOKEN)
            .query(&[("afterSeq", last + 7)]),
    ];
    for request in requests {
        let resp = tokio::time::timeout(Duration::from_secs(10), async {
            let resp = request.send().await.unwrap();
            let status = resp.status();
            (status, resp.bytes().await.unwrap())
        })
        .await
        .expect("the stream of a finished run stayed open");
        assert_eq!(resp.0, 204);
        assert!(resp.1.is_empty());
    }
    // Just before the end: the terminal event, then the stream closes.
    let resp = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", (last - 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tail = tokio::time::timeout(Duration::from_secs(10), read_sse(resp, None))
        .await
        .unwrap();
    assert_eq!(tail.len(), 1);
    assert!(tail[0].2.kind.is_terminal());
    // The Rust client resumed at the end ends at once, without an item.
    let rest: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        s.client.events(&run.id, last).collect::<Vec<_>>(),
    )
    .await
    .expect("Client::events of a finished run never ended");
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reconnects_with_last_event_id_and_sees_every_event_once() {
    let s = server().await;
    let run = s
        .client
        .create_run(&fake(&[
            "out:1",
            "sleep:200",
            "out:2",
            "sleep:200",
            "out:3",
            "exit:0",
        ]))
        .await
        .unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    s.client.start(&run.id).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/runs/{}/events/stream", s.base, run.id);
    let first = read_sse(
        http.get(&url).bearer_auth(TOKEN).send().await.unwrap(),
        Some(4),
    )
    .await;
    let last = first.last().unwrap().0;
    // Disconnected mid-run; reconnect with Last-Event-ID.
    let resp = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let rest = read_sse(resp, None).await;
    let mut all: Vec<(u64, String, Event)> = first;
    all.extend(rest);
    let window = s.client.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(
        all.iter().map(|(_, _, e)| e.clone()).collect::<Vec<_>>(),
        window,
        "every event exactly once, in order"
    );
    for (id, kind, e) in &all {
        assert_eq!(*id, e.seq);
        assert_eq!(kind, e.kind.type_name());
    }
    assert!(
        matches!(all.last().unwrap().2.kind, EventKind::Terminal { .. }),
        "stream closes after terminal"
    );
    // afterSeq wins over Last-Event-ID.
    let resp = http
        .get(format!("{url}?afterSeq=2"))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "5")
        .send()
        .await
        .unwrap();
    let replay = read_sse(resp, None).await;
    assert_eq!(replay.first().unwrap().0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_subscribers_receive_identical_streams() {
    let s = server().await;
    let run = s
        .client
        .create_run(&fake(&[
            "outbytes:200000",
            "sleep:100",
            "out:end",
            "exit:0",
        ]))
        .await
        .unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = s.client.clone();
        let id = run.id.clone();
        tasks.push(tokio::spawn(async move {
            c.events(&id, 0)
                .map(|e| e.unwrap())
                .collect::<Vec<_>>()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.client.start(&run.id).await.unwrap();
    let window = s.client.list_events(&run.id, 0, 1000).await.unwrap();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got.last().unwrap().kind.is_terminal());
        let window = if window.last().unwrap().kind.is_terminal() {
            window.clone()
        } else {
            s.client.list_events(&run.id, 0, 1000).await.unwrap()
        };
        assert_eq!(got, window);
    }
}

#[tokio::test]
async fn evidence_is_409_before_the_end_and_cancel_works() {
    let s = server().await;
    let run = s.client.create_run(&fake(&["hang"])).await.unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    assert!(matches!(
        s.client.evidence(&run.id).await,
        Err(Error::NotTerminal { .. })
    ));
    s.client.start(&run.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.client.cancel(&run.id).await.unwrap();
    let events: Vec<Event> = s
        .client
        .events(&run.id, 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::Terminal {
            status: RunStatus::Canceled,
            ..
        }
    ));
    s.client.evidence(&run.id).await.unwrap();
    assert!(
        matches!(
            s.client.cancel(&run.id).await,
            Err(Error::InvalidTransition {
                from: RunStatus::Canceled,
                input: "cancel"
            })
        ),
        "cancel of an ended run is 409, typed back as the engine's error"
    );
}

#[tokio::test]
async fn metrics_and_healthz() {
    let s = server().await;
    let run = s.client.create_run(&fake(&["exit:0"])).await.unwrap();
    s.client.upload(&run.id, archive()).await.unwrap();
    s.client.start(&run.id).await.unwrap();
    let _: Vec<_> = s.client.events(&run.id, 0).collect().await;
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("crownest_runs{status=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(text.contains("crownest_events_appended_total"));
    assert!(
        text.contains(&format!(
            "crownest_bytes_uploaded_total {}",
            archive().len()
        )),
        "{text}"
    );
    assert!(text.contains("crownest_active_subscribers 0"));
    drop(s.engine);
}

#[tokio::test]
async fn openapi_matches_the_routes() {
    let s = server().await;
    let http = reqwest::Client::new();
    let doc: serde_json::Value = http
        .get(format!("{}/v1/openapi.json", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).into(), (*p).into()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(
        documented, routes,
        "/v1/openapi.json and ROUTES list the same operations"
    );
    // Each secured operation documents the scope the server really requires.
    for (method, path) in &routes {
        let op = &doc["paths"][path][method.to_lowercase()];
        // The two probes need no token.
        if path == "/healthz" || path == "/readyz" {
            continue;
        }
        let want = crownest_http::Scope::required_for(
            &reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            path,
        );
        assert_eq!(op["x-crownest-scope"], want.as_str(), "{method} {path}");
        assert!(op["responses"]["403"].is_object(), "{method} {path}");
    }
    // Every listed route is really routed: it never answers the fallback's `no_route`.
    for (method, path) in &routes {
        let url = format!(
            "{}{}",
            s.base,
            path.replace("{id}", "run_x")
                .replace("{tid}", "xfer_x")
                .replace("{sha256}", &"a".repeat(64))
        );
        let resp = http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 405, "{method} {path}");
        if method != "HEAD" {
            let body = resp.text().await.unwrap();
            assert!(!body.contains("no_route"), "{method} {path} is not routed");
        }
    }
    // And the fallback really answers no_route for a route that does not exist.
    let body = http
        .get(format!("{}/v1/nope", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("no_route"));
}

/// The full lifecycle on the real process backend and the SQLite store: a Python command
/// prints, writes an artifact and exits 0; a second run of the same archive is attached by
/// digest (not sent again) and exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_the_process_backend() {
    use crownest_backend_process::{ProcessBackend, ProcessConfig};
    let home = tempfile::tempdir().unwrap();
    let store = crownest_store_sqlite::SqliteStore::open(home.path())
        .await
        .unwrap();
    let engine = WorkspaceRuns::builder(Arc::new(store))
        .backend(Arc::new(
            ProcessBackend::new(ProcessConfig::default()).unwrap(),
        ))
        .config(fast())
        .open()
        .await
        .unwrap();
    // A server offers the process backend only when it is named.
    let app = router(
        engine.clone(),
        HttpConfig::default()
            .with_token(TOKEN)
            .with_backends(["process"]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(base, Some(TOKEN.into())).unwrap();

    let source = tar_gz(&[(
        "main.py",
        b"import os\nprint('hello from', os.getcwd().rsplit('/', 1)[-1])\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt', 'w').write('result')\n",
        0o644,
    )]);
    let run = client
        .create_run(
            &RunSpec::new(["python3", "main.py"])
                .with_backend("process")
                .with_artifact("out/r.txt", true),
        )
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::AwaitingArchive);
    let ready = client.upload(&run.id, source.clone()).await.unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    client.start(&run.id).await.unwrap();
    let events: Vec<Event> = client
        .events(&run.id, 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(events, client.list_events(&run.id, 0, 1000).await.unwrap());
    let stdout: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(String::from_utf8_lossy(&c.bytes()).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(stdout, "hello from workspace\n");
    let done = client.get_run(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(done.exit_code, Some(0));
    let evidence = client.evidence(&run.id).await.unwrap();
    evidence.verify_events(&events).unwrap();
    assert_eq!(evidence.template.backend, "process");
    let (bytes, sha) = client
        .artifact(&done.artifacts[0].artifact_id)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"result");
    assert_eq!(sha.as_deref(), Some(evidence.artifacts[0].sha256.as_str()));

    // The same archive again: the server has it, so it is attached by digest.
    let desc = descriptor_of(&source);
    assert_eq!(
        client.has_archive(&desc.sha256).await.unwrap(),
        Some(desc.size_bytes)
    );
    let uploaded_before = engine.metrics().bytes_uploaded;
    let again = client
        .create_run(&RunSpec::new(["python3", "-c", "import sys; sys.exit(3)"]))
        .await
        .unwrap();
    client.upload(&again.id, source).await.unwrap();
    assert_eq!(engine.metrics().bytes_uploaded, uploaded_before);
    client.start(&again.id).await.unwrap();
    let last = client
        .events(&again.id, 0)
        .map(|e| e.unwrap())
        .collect::<Vec<_>>()
        .await
        .pop()
        .unwrap();
    match last.kind {
        EventKind::Terminal {
            status, exit_code, ..
        } => {
            assert_eq!(status, RunStatus::Failed);
            assert_eq!(exit_code, Some(3));
        }
        other => panic!("last event is {other:?}"),
    }
}

#[tokio::test]
async fn secrets_in_the_create_body_reach_the_command_and_never_come_back() {
    let s = server().await;
    let http = reqwest::Client::new();
    let secret = "http-S3cret-41";
    // The wire contract: `secrets` beside `env` in the create body.
    let resp = http
        .post(format!("{}/v1/runs", s.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "command": ["fake", "env:TOKEN", "env:CI", "exit:0"],
            "env": {"CI": "true"},
            "secrets": {"TOKEN": secret},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created = resp.text().await.unwrap();
    assert!(
        !created.contains(secret),
        "create echoes the secret: {created}"
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["secretNames"], serde_json::json!(["TOKEN"]));
    let id = crownest_core::RunId::parse(created["id"].as_str().unwrap()).unwrap();
    s.client.upload(&id, archive()).await.unwrap();
    s.client.start(&id).await.unwrap();
    let events: Vec<Event> = s.client.events(&id, 0).map(|e| e.unwrap()).collect().await;
    let stdout: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => c.data.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        stdout, "***\ntrue\n",
        "the secret arrived (masked), CI did not"
    );
    // The typed client (what `crownest --server URL run --secret K` uses) sends them too.
    let typed = s
        .client
        .create_run(&fake(&["env:TOKEN", "exit:0"]).with_secret("TOKEN", secret))
        .await
        .unwrap();
    assert_eq!(typed.secret_names, ["TOKEN"]);
    s.client.upload(&typed.id, archive()).await.unwrap();
    s.client.start(&typed.id).await.unwrap();
    let typed_events: Vec<Event> = s
        .client
        .events(&typed.id, 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(
        typed_events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Stdout(c) if c.data.as_deref() == Some("***\n")))
    );
    // Nothing the server answers carries the value.
    for (path, names_it) in [
        (format!("/v1/runs/{id}"), true),
        ("/v1/runs".to_owned(), true),
        // The `spec` event names the secrets (never their values).
        (format!("/v1/runs/{id}/events"), true),
        (format!("/v1/runs/{id}/evidence"), true),
        (format!("/v1/runs/{id}/evidence?format=in-toto"), true),
        (format!("/v1/runs/{}", typed.id), true),
    ] {
        let resp = http
            .get(format!("{}{path}", s.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains(secret), "{path} returns the secret: {text}");
        assert_eq!(
            text.contains("TOKEN"),
            names_it,
            "{path} names the secret: {text}"
        );
    }
}

#[tokio::test]
async fn openapi_documents_env_and_secrets() {
    let doc = crownest_http::openapi::document();
    let props = &doc["components"]["schemas"]["RunSpec"]["properties"];
    assert_eq!(props["secrets"]["type"], "object");
    assert_eq!(props["secrets"]["writeOnly"], true);
    let described = props["secrets"]["description"].as_str().unwrap();
    assert!(
        described.contains("accidental-echo guard only"),
        "{described}"
    );
    assert!(
        props["env"]["description"]
            .as_str()
            .unwrap()
            .contains("never masked")
    );
}
