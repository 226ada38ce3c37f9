//! What an operator lists and deletes: `GET /v1/runs` filtered by status, backend, label
//! and creation time; `DELETE /v1/runs/{id}` of an ended run (admin scope), which deletes
//! its events and evidence for good.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_core::store::RunQuery;
use crownest_core::testing::FakeBackend;
use crownest_core::{MemoryStore, RunId, RunSpec, RunStatus, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, Scope, TokenEntry, TokenSet, router};
use serde_json::Value;

struct Server {
    base: String,
    admin: Client,
    submitter: String,
    admin_token: String,
}

async fn server() -> Server {
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(Arc::new(FakeBackend::new()))
        .backend(Arc::new(FakeBackend::named("wasm")))
        .open()
        .await
        .unwrap();
    let (admin_token, admin) = TokenEntry::mint("ops", [Scope::Admin]);
    let (submitter, ci) = TokenEntry::mint("ci", [Scope::Submit, Scope::Read]);
    let tokens = TokenSet::parse(&format!("{}\n{}", admin.to_line(), ci.to_line())).unwrap();
    let app = router(engine, HttpConfig::default().with_tokens(tokens));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        admin: Client::new(base.clone(), Some(admin_token.clone())).unwrap(),
        base,
        submitter,
        admin_token,
    }
}

async fn get(s: &Server, path_and_query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path_and_query}", s.base))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<String> {
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn runs_are_filtered_by_status_backend_label_and_created_time() {
    let s = server().await;
    let mut made = Vec::new();
    for (backend, team) in [("fake", "a"), ("wasm", "a"), ("fake", "b"), ("wasm", "b")] {
        let run = s
            .admin
            .create_run(
                &RunSpec::new(["fake", "exit:0"])
                    .with_backend(backend)
                    .with_label("team", team)
                    .with_label("commit", "abc"),
            )
            .await
            .unwrap();
        made.push(run);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.admin.cancel(&made[0].id).await.unwrap();
    let id = |i: usize| made[i].id.to_string();
    let cases: Vec<(String, Vec<String>)> = vec![
        ("backend=wasm".into(), vec![id(3), id(1)]),
        ("label=team%3Da".into(), vec![id(1), id(0)]),
        (
            "label=team%3Da&label=commit%3Dabc&backend=fake".into(),
            vec![id(0)],
        ),
        ("label=team%3Dc".into(), vec![]),
        ("status=canceled".into(), vec![id(0)]),
        ("status=awaiting_archive&backend=fake".into(), vec![id(2)]),
        (
            format!("createdAfter={}", made[1].timestamps.created.unwrap()),
            vec![id(3), id(2), id(1)],
        ),
        (
            format!(
                "createdBefore={}&createdAfter={}",
                made[2].timestamps.created.unwrap(),
                made[1].timestamps.created.unwrap()
            ),
            vec![id(1)],
        ),
        ("backend=wasm&limit=1".into(), vec![id(3)]),
    ];
    for (query, want) in cases {
        let (status, body) = get(&s, &format!("/v1/runs?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(ids(&body), want, "{query}");
    }
    // Paging walks the filtered list.
    let (_, first) = get(&s, "/v1/runs?backend=wasm&limit=1").await;
    let cursor = first["nextCursor"].as_str().unwrap();
    let (_, second) = get(
        &s,
        &format!("/v1/runs?backend=wasm&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&second), vec![id(1)]);
    // The typed client sends the same filters.
    let page = s
        .admin
        .list_runs_where(&RunQuery {
            backend: Some("wasm".into()),
            labels: [("team".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.runs
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>(),
        vec![id(3)]
    );
    // Misspelt or malformed filters are refused, not ignored.
    for bad in [
        "created_after=2026-01-01T00:00:00Z",
        "createdAfter=yesterday",
        "label=team",
        "status=done",
    ] {
        let (status, body) = get(&s, &format!("/v1/runs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn delete_removes_an_ended_run_with_its_evidence_and_needs_admin() {
    let s = server().await;
    let run = s
        .admin
        .create_run(&RunSpec::new(["fake", "exit:0"]))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/runs/{}", s.base, run.id);
    // Not ended: 409, and it is kept.
    let resp = http
        .delete(&url)
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(body["error"]["input"], "delete");
    assert_eq!(
        s.admin.get_run(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    s.admin.cancel(&run.id).await.unwrap();
    s.admin.evidence(&run.id).await.unwrap();
    // Submit + read may not delete.
    let resp = http
        .delete(&url)
        .bearer_auth(&s.submitter)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Admin may: 204, then the run, its events and its evidence are gone.
    let resp = http
        .delete(&url)
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for path in ["", "/events", "/evidence"] {
        let (status, body) = get(&s, &format!("/v1/runs/{}{path}", run.id)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, list) = get(&s, "/v1/runs").await;
    assert!(ids(&list).is_empty());
    // Again: 404; through the client: NotFound.
    assert!(matches!(
        s.admin.delete_run(&run.id).await,
        Err(crownest_core::Error::NotFound { .. })
    ));
    assert!(matches!(
        s.admin.delete_run(&RunId::new()).await,
        Err(crownest_core::Error::NotFound { .. })
    ));
}
