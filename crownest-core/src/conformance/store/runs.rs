//! Runs: create (and idempotency), get, list and filter, delete, unfinished; artifacts by id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::error::Error;
use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::run::{Artifact, ArtifactKind, RunOwner, RunRecord};
use crate::spec::{Limits, RunSpec};
use crate::status::RunStatus;
use crate::store::{BlobExpect, CreateOutcome, RunCommit, RunQuery, Store};
use crate::time::Timestamp;

use super::*;

/// `create_run` stores a new run; `get_run` returns it unchanged.
pub async fn create_and_get(store: Arc<dyn Store>) {
    let run = new_run(None);
    let out = store.create_run(run.clone()).await.unwrap();
    assert_eq!(
        out,
        CreateOutcome::Created(run.clone()),
        "create_run returns Created"
    );
    assert_eq!(
        store.get_run(&run.id).await.unwrap(),
        run,
        "get_run returns the stored run"
    );
}

/// `create_run_with` stores a new run with its first commit (the events sealed from seq 1,
/// the record as committed); with an idempotency key already used it returns the first
/// run as `Existing`, seals nothing and leaves that run's events as they were.
pub async fn create_run_with_commits_only_a_new_run(store: Arc<dyn Store>) {
    let first_commit = |run: &RunRecord, text: &str| RunCommit {
        expected_next_seq: run.next_seq,
        events: vec![out(text)],
        record: Some(run.clone()),
        evidence: None,
        envelope: None,
    };
    let run = new_run(Some("with-key"));
    let (outcome, sealed) = store
        .create_run_with(run.clone(), first_commit(&run, "first"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CreateOutcome::Created(run.clone()),
        "a new run is Created"
    );
    assert_eq!(
        sealed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1],
        "the first commit's events are sealed from seq 1"
    );
    let stored = store.get_run(&run.id).await.unwrap();
    assert_eq!(
        stored.next_seq, 2,
        "the stored record follows the first commit"
    );
    assert_eq!(
        stored.chain_head, sealed[0].hash,
        "the chain head is the sealed event's"
    );

    let again = new_run(Some("with-key"));
    let (outcome, sealed) = store
        .create_run_with(again.clone(), first_commit(&again, "second"))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, CreateOutcome::Existing(r) if r.id == run.id),
        "the same key returns the first run as Existing: {outcome:?}"
    );
    assert!(
        sealed.is_empty(),
        "nothing is committed for an existing run"
    );
    let events = store.list_events(&run.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 1, "the first run's events are unchanged");
    assert!(
        matches!(store.get_run(&again.id).await, Err(Error::NotFound { .. })),
        "the second run was not stored"
    );
}

/// A second create with the same idempotency key returns the first run as `Existing`.
pub async fn idempotency_key_returns_existing(store: Arc<dyn Store>) {
    let first = created(&store, Some("key-1")).await;
    let second = store.create_run(new_run(Some("key-1"))).await.unwrap();
    assert_eq!(
        second,
        CreateOutcome::Existing(first.clone()),
        "same key → Existing(first)"
    );
    let all = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|r| r.spec.idempotency_key.as_deref() == Some("key-1"))
            .count(),
        1
    );
}

/// A second create with the same idempotency key and a *different* spec returns the first
/// run as `Existing` with its spec exactly as it was stored (so the engine can tell the
/// requests apart, see `RunRecord::same_request`), and stores nothing of the second.
pub async fn idempotency_key_keeps_the_first_spec(store: Arc<dyn Store>) {
    let mut spec = RunSpec::new(["python3", "main.py"])
        .with_env("CI", "true")
        .with_label("commit", "abc123")
        .with_artifact("out/result.json", true)
        .with_timeout_ms(30_000)
        .with_idempotency_key("key-spec");
    spec.secrets
        .insert("TOKEN".into(), crate::secret::SecretValue::from("s3cret"));
    let first = RunRecord::new(
        RunId::new(),
        spec.clone(),
        "fake".into(),
        Limits::default(),
        RunOwner::current("conformance"),
    );
    let stored = store.create_run(first.clone()).await.unwrap().into_run();
    assert!(
        stored.same_request(&first),
        "the stored spec is the spec as asked"
    );
    let other = RunRecord::new(
        RunId::new(),
        spec.clone().with_env("CI", "false"),
        "fake".into(),
        Limits::default(),
        RunOwner::current("conformance"),
    );
    match store.create_run(other.clone()).await.unwrap() {
        CreateOutcome::Existing(existing) => {
            assert_eq!(existing.id, first.id, "same key → the first run");
            assert!(
                existing.same_request(&first),
                "the first run comes back with the first spec: {:?}",
                existing.spec
            );
            assert!(
                !existing.same_request(&other),
                "and differs from the second"
            );
        }
        CreateOutcome::Created(r) => panic!("a reused key created run {}", r.id),
    }
    assert!(
        matches!(store.get_run(&other.id).await, Err(Error::NotFound { .. })),
        "nothing of the second request is stored"
    );
}

/// `get_run` of an unknown id is `NotFound`.
pub async fn unknown_run_is_not_found(store: Arc<dyn Store>) {
    let err = store.get_run(&RunId::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "run", .. }),
        "got {err:?}"
    );
    let err = store.list_events(&RunId::new(), 0, 10).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }),
        "list_events of unknown run: {err:?}"
    );
}

/// `list_runs`: newest first, filtered by status, paged with `before`.
pub async fn list_runs_newest_first_filtered_and_paged(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(created(&store, None).await.id);
    }
    let mut done = store.get_run(&ids[1]).await.unwrap();
    store
        .commit(&done.id, terminal_commit(&done))
        .await
        .unwrap();
    done = store.get_run(&ids[1]).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);

    let all = store
        .list_runs(&RunQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<RunId> = all
        .iter()
        .map(|r| r.id.clone())
        .filter(|id| ids.contains(id))
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "newest first");

    let page1 = store
        .list_runs(&RunQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = store
        .list_runs(&RunQuery {
            limit: 2,
            before: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        page2.iter().all(|r| r.id < page1[1].id),
        "page 2 is older than page 1"
    );
    assert!(
        !page2.iter().any(|r| page1.contains(r)),
        "pages do not overlap"
    );

    let succeeded = store
        .list_runs(&RunQuery {
            status: Some(RunStatus::Succeeded),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(succeeded.iter().any(|r| r.id == ids[1]));
    assert!(succeeded.iter().all(|r| r.status == RunStatus::Succeeded));
}

/// `get_artifact` finds an artifact of any run by id.
pub async fn artifacts_are_found_by_id(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let info = store
        .put_blob(
            stream_of(b"artifact"),
            BlobExpect {
                descriptor: None,
                max_bytes: 100,
            },
        )
        .await
        .unwrap();
    let artifact = Artifact {
        artifact_id: ArtifactId::new(),
        run_id: run.id.clone(),
        path: "out/a.txt".into(),
        kind: ArtifactKind::File,
        size_bytes: info.size_bytes,
        sha256: info.sha256,
        mode: 0o644,
        skipped: Vec::new(),
    };
    let mut record = run.clone();
    record.artifacts.push(artifact.clone());
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![],
                record: Some(record),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_artifact(&artifact.artifact_id).await.unwrap(),
        artifact
    );
    assert!(matches!(
        store.get_artifact(&ArtifactId::new()).await,
        Err(Error::NotFound { .. })
    ));
}

/// `list_runs` filters by backend, labels and creation time (with status and paging), as
/// `RunQuery::matches` says; `limit` counts matching runs.
pub async fn list_runs_filtered_by_backend_labels_and_created(store: Arc<dyn Store>) {
    let base = Timestamp::now();
    let mut made = Vec::new();
    for i in 0..8u64 {
        let mut spec = RunSpec::new(["true"]);
        if i % 2 == 0 {
            spec = spec.with_label("team", "a");
        }
        if i % 3 == 0 {
            spec = spec.with_label("commit", format!("c{i}"));
        }
        let mut run = RunRecord::new(
            RunId::new(),
            spec,
            if i < 4 { "docker" } else { "wasm" }.into(),
            Limits::default(),
            RunOwner::current("conformance"),
        );
        run.timestamps.created = Some(base.plus_millis(i * 60_000));
        made.push(store.create_run(run).await.unwrap().into_run());
    }
    let queries = [
        RunQuery {
            backend: Some("docker".into()),
            ..Default::default()
        },
        RunQuery {
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        },
        RunQuery {
            labels: [
                ("team".to_owned(), "a".to_owned()),
                ("commit".to_owned(), "c6".to_owned()),
            ]
            .into(),
            ..Default::default()
        },
        RunQuery {
            labels: [("team".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        },
        RunQuery {
            created_after: Some(base.plus_millis(2 * 60_000)),
            created_before: Some(base.plus_millis(6 * 60_000)),
            ..Default::default()
        },
        RunQuery {
            backend: Some("wasm".into()),
            labels: [("team".to_owned(), "a".to_owned())].into(),
            created_after: Some(base.plus_millis(5 * 60_000)),
            status: Some(RunStatus::AwaitingArchive),
            ..Default::default()
        },
    ];
    for q in queries {
        let got: Vec<RunId> = store
            .list_runs(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut want: Vec<RunId> = made
            .iter()
            .filter(|r| q.matches(r))
            .map(|r| r.id.clone())
            .collect();
        want.sort();
        want.reverse();
        assert_eq!(
            got, want,
            "list_runs({q:?}) returns exactly the matching runs"
        );
        // `limit` and `before` page through the matching runs only.
        if want.len() >= 2 {
            let page = store
                .list_runs(&RunQuery {
                    limit: 1,
                    before: Some(want[0].clone()),
                    ..q.clone()
                })
                .await
                .unwrap();
            assert_eq!(page.len(), 1);
            assert_eq!(page[0].id, want[1], "the next matching run: {q:?}");
        }
    }
}

/// `delete_run` deletes an ended run with its events, evidence, artifact records and
/// transfers, and frees its idempotency key; a run that has not ended is refused and kept;
/// an unknown run is `NotFound`.
pub async fn delete_run_removes_an_ended_run_and_refuses_a_live_one(store: Arc<dyn Store>) {
    let live = created(&store, Some("live-key")).await;
    let err = store.delete_run(&live.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidTransition {
                input: "delete",
                ..
            }
        ),
        "deleting a run that has not ended: {err:?}"
    );
    assert!(store.get_run(&live.id).await.is_ok(), "it is kept");
    assert!(matches!(
        store.delete_run(&RunId::new()).await,
        Err(Error::NotFound { .. })
    ));

    let run = created(&store, Some("done-key")).await;
    let run = append(&store, &run, 3).await;
    // The artifact's bytes are stored first, as the engine does.
    store.put_blob(stream_of(b"a"), any_blob()).await.unwrap();
    let artifact = Artifact {
        artifact_id: ArtifactId::new(),
        run_id: run.id.clone(),
        path: "out/a.txt".into(),
        kind: ArtifactKind::File,
        size_bytes: 1,
        sha256: Sha256Digest::of(b"a"),
        mode: 0o644,
        skipped: Vec::new(),
    };
    let mut record = run.clone();
    record.artifacts.push(artifact.clone());
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: run.next_seq,
                events: vec![],
                record: Some(record),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap();
    let data = b"transfer bytes".to_vec();
    store
        .create_transfer(&transfer_for(&run.id, &data))
        .await
        .unwrap();
    let stored = store.get_run(&run.id).await.unwrap();
    store
        .commit(&run.id, terminal_commit(&stored))
        .await
        .unwrap();
    store.delete_run(&run.id).await.unwrap();
    assert!(matches!(
        store.get_run(&run.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.list_events(&run.id, 0, 10).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.get_evidence(&run.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.get_artifact(&artifact.artifact_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        store
            .list_transfers(Some(&run.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .list_runs(&RunQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == run.id),
        "not listed"
    );
    // Its idempotency key is free again; the other run is untouched.
    let again = store.create_run(new_run(Some("done-key"))).await.unwrap();
    assert!(matches!(again, CreateOutcome::Created(_)), "{again:?}");
    assert_eq!(store.get_run(&live.id).await.unwrap().id, live.id);
}

/// `list_unfinished` returns every run not in a terminal state.
pub async fn list_unfinished_returns_non_terminal(store: Arc<dyn Store>) {
    let open = created(&store, None).await;
    let done = created(&store, None).await;
    store
        .commit(&done.id, terminal_commit(&done))
        .await
        .unwrap();
    let unfinished = store.list_unfinished().await.unwrap();
    assert!(unfinished.iter().any(|r| r.id == open.id));
    assert!(!unfinished.iter().any(|r| r.id == done.id));
}
