//! Store conformance: one function per bullet of the [`Store`] contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;

use crate::error::{Error, RejectReason};
use crate::event::{EventKind, NewEvent, OutputChunk, verify_chain};
use crate::evidence::EvidenceBundle;
use crate::gc::GcPolicy;
use crate::ids::{ArtifactId, RunId, Sha256Digest, TransferId};
use crate::run::{
    ArchiveDescriptor, ArchiveInfo, Artifact, ArtifactKind, RunOwner, RunRecord, UploadKind,
};
use crate::spec::{Limits, RunSpec};
use crate::status::RunStatus;
use crate::store::{
    BlobExpect, ByteStream, CreateOutcome, RunCommit, RunQuery, Store, TransferRecord,
};
use crate::time::Timestamp;

pub use super::store_usage::usage_counts_every_run_once;

fn new_run(key: Option<&str>) -> RunRecord {
    let mut spec = RunSpec::new(["true"]);
    spec.idempotency_key = key.map(str::to_owned);
    RunRecord::new(
        RunId::new(),
        spec,
        "fake".into(),
        Limits::default(),
        RunOwner::current("conformance"),
    )
}

fn out(text: &str) -> NewEvent {
    NewEvent::now(EventKind::Stdout(OutputChunk {
        offset: 0,
        data: Some(text.into()),
        data_base64: None,
    }))
}

pub(super) fn stream_of(data: &[u8]) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

pub(super) async fn created(store: &Arc<dyn Store>, key: Option<&str>) -> RunRecord {
    store
        .create_run(new_run(key))
        .await
        .expect("create_run")
        .into_run()
}

/// Commits `n` stdout events; returns the record after.
async fn append(store: &Arc<dyn Store>, run: &RunRecord, n: usize) -> RunRecord {
    let events = (0..n).map(|i| out(&format!("line {i}"))).collect();
    let stored = store.get_run(&run.id).await.unwrap();
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: stored.next_seq,
                events,
                record: None,
                evidence: None,
                envelope: None,
            },
        )
        .await
        .expect("commit");
    store.get_run(&run.id).await.unwrap()
}

/// Builds the terminal commit exactly as the engine does.
pub(super) fn terminal_commit(stored: &RunRecord) -> RunCommit {
    let mut record = stored.clone();
    record.status = RunStatus::Succeeded;
    record.exit_code = Some(0);
    record.timestamps.terminal = Some(Timestamp::now());
    let terminal = NewEvent::now(EventKind::Terminal {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        failure: None,
        duration_ms: 1,
        output: None,
        sandbox: None,
        crownest_version: None,
        bundle_digest: None,
    });
    let sealed = crate::event::seal(
        &stored.chain_head,
        &stored.id,
        stored.next_seq,
        terminal.clone(),
    );
    let evidence = EvidenceBundle::build(&record, None, None, None, sealed);
    RunCommit {
        expected_next_seq: stored.next_seq,
        events: vec![terminal],
        record: Some(record),
        evidence: Some(evidence),
        envelope: None,
    }
}

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

/// `commit` seals events with gap-free seqs from `next_seq` and the hash chain.
pub async fn commit_seals_gap_free_hash_chain(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let sealed = store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![out("a"), out("b")],
                record: None,
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(sealed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    let after = append(&store, &run, 3).await;
    assert_eq!(after.next_seq, 6, "next_seq maintained by the store");
    let events = store.list_events(&run.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 5);
    let summary = verify_chain(&run.id, &events).expect("chain verifies");
    assert_eq!(
        summary.chain_head, after.chain_head,
        "chain_head maintained by the store"
    );
    assert_eq!(
        events[..2],
        sealed[..],
        "list_events returns what commit sealed"
    );
}

/// A stale `expected_next_seq` is a `Conflict` and writes nothing (events or record).
pub async fn commit_with_stale_seq_conflicts_and_writes_nothing(store: Arc<dyn Store>) {
    let run = append(&store, &created(&store, None).await, 2).await;
    let mut changed = run.clone();
    changed.status = RunStatus::ArchiveReady;
    let err = store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![out("x")],
                record: Some(changed),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "got {err:?}");
    assert_eq!(
        store.get_run(&run.id).await.unwrap(),
        run,
        "record unchanged"
    );
    assert_eq!(
        store.list_events(&run.id, 0, 100).await.unwrap().len(),
        2,
        "no event written"
    );
}

/// A terminal event must be last in its batch and come with evidence and a terminal record.
pub async fn terminal_must_be_last_with_evidence(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let good = terminal_commit(&run);
    let mut not_last = good.clone();
    not_last.events.push(out("after"));
    assert!(
        matches!(
            store.commit(&run.id, not_last).await,
            Err(Error::Conflict { .. })
        ),
        "terminal not last"
    );
    let mut no_evidence = good.clone();
    no_evidence.evidence = None;
    assert!(
        matches!(
            store.commit(&run.id, no_evidence).await,
            Err(Error::Conflict { .. })
        ),
        "terminal without evidence"
    );
    let mut evidence_without_terminal = good.clone();
    evidence_without_terminal.events = vec![out("x")];
    assert!(
        matches!(
            store.commit(&run.id, evidence_without_terminal).await,
            Err(Error::Conflict { .. })
        ),
        "evidence without terminal"
    );
    let mut wrong_evidence = good.clone();
    if let Some(ev) = wrong_evidence.evidence.as_mut() {
        ev.terminal_event.hash = "00".repeat(32);
    }
    assert!(
        matches!(
            store.commit(&run.id, wrong_evidence).await,
            Err(Error::Conflict { .. })
        ),
        "evidence naming another terminal"
    );
    assert_eq!(
        store.list_events(&run.id, 0, 10).await.unwrap().len(),
        0,
        "all refused commits wrote nothing"
    );
    store
        .commit(&run.id, good)
        .await
        .expect("a well-formed terminal commit");
}

/// Nothing can be appended after the terminal event.
pub async fn nothing_appends_after_terminal(store: Arc<dyn Store>) {
    let run = append(&store, &created(&store, None).await, 1).await;
    store.commit(&run.id, terminal_commit(&run)).await.unwrap();
    let after = store.get_run(&run.id).await.unwrap();
    let err = store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: after.next_seq,
                events: vec![out("late")],
                record: None,
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "got {err:?}");
    let events = store.list_events(&run.id, 0, 10).await.unwrap();
    assert!(
        events.last().unwrap().kind.is_terminal(),
        "terminal stays last"
    );
}

/// Evidence is `NotTerminal` before the end and equal to what was committed after.
pub async fn evidence_is_stored_with_terminal(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    assert!(matches!(
        store.get_evidence(&run.id).await,
        Err(Error::NotTerminal { .. })
    ));
    assert!(matches!(
        store.get_evidence(&RunId::new()).await,
        Err(Error::NotFound { .. })
    ));
    let commit = terminal_commit(&run);
    let evidence = commit.evidence.clone().unwrap();
    store.commit(&run.id, commit).await.unwrap();
    let got = store.get_evidence(&run.id).await.unwrap();
    assert_eq!(got, evidence);
    let events = store.list_events(&run.id, 0, 10).await.unwrap();
    got.verify_events(&events)
        .expect("evidence verifies the stored events");
    assert_eq!(
        store.get_run(&run.id).await.unwrap().status,
        RunStatus::Succeeded
    );
}

/// `get_evidence_envelope`: `NotTerminal` before the end, the committed envelope unchanged
/// after, and `None` for evidence stored without one.
pub async fn evidence_envelope_is_stored_with_evidence(store: Arc<dyn Store>) {
    let signed = created(&store, None).await;
    assert!(matches!(
        store.get_evidence_envelope(&signed.id).await,
        Err(Error::NotTerminal { .. })
    ));
    assert!(matches!(
        store.get_evidence_envelope(&RunId::new()).await,
        Err(Error::NotFound { .. })
    ));
    let mut commit = terminal_commit(&signed);
    let key = crate::signing::HostKey::from_seed([7; 32]);
    let envelope = commit.evidence.as_ref().map(|e| e.to_dsse(&key));
    commit.envelope.clone_from(&envelope);
    store.commit(&signed.id, commit).await.unwrap();
    let got = store.get_evidence_envelope(&signed.id).await.unwrap();
    assert_eq!(got, envelope, "the envelope comes back unchanged");
    let unsigned = created(&store, None).await;
    store
        .commit(&unsigned.id, terminal_commit(&unsigned))
        .await
        .unwrap();
    assert_eq!(
        store.get_evidence_envelope(&unsigned.id).await.unwrap(),
        None
    );
    // An envelope without evidence is refused.
    let other = created(&store, None).await;
    let mut bad = terminal_commit(&other);
    bad.evidence = None;
    bad.events.clear();
    bad.envelope = envelope;
    assert!(matches!(
        store.commit(&other.id, bad).await,
        Err(Error::Conflict { .. })
    ));
}

/// `request_cancel` sets `cancel_requested`; `commit` never clears it.
pub async fn cancel_flag_survives_commits(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let flagged = store.request_cancel(&run.id).await.unwrap();
    assert!(flagged.cancel_requested);
    let mut record = run.clone();
    record.cancel_requested = false;
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: 1,
                events: vec![out("x")],
                record: Some(record),
                evidence: None,
                envelope: None,
            },
        )
        .await
        .unwrap();
    assert!(
        store.get_run(&run.id).await.unwrap().cancel_requested,
        "commit kept the flag"
    );
}

/// `list_events(after_seq, limit)` returns a bounded window in order.
pub async fn list_events_returns_a_window(store: Arc<dyn Store>) {
    let run = append(&store, &created(&store, None).await, 10).await;
    let w = store.list_events(&run.id, 3, 4).await.unwrap();
    assert_eq!(
        w.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert!(store.list_events(&run.id, 10, 5).await.unwrap().is_empty());
    assert_eq!(store.list_events(&run.id, 8, 100).await.unwrap().len(), 2);
}

/// Blobs are content-addressed: same bytes, same digest, stored once; visible at once.
pub async fn blobs_are_content_addressed(store: Arc<dyn Store>) {
    let data = b"hello blob".repeat(1000);
    let d = Sha256Digest::of(&data);
    assert_eq!(store.has_blob(&d).await.unwrap(), None);
    let expect = BlobExpect {
        descriptor: None,
        max_bytes: 1 << 20,
    };
    let a = store.put_blob(stream_of(&data), expect).await.unwrap();
    let b = store.put_blob(stream_of(&data), expect).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.sha256, d);
    assert_eq!(a.size_bytes, data.len() as u64);
    assert_eq!(store.has_blob(&d).await.unwrap(), Some(data.len() as u64));
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut store.open_blob(&d).await.unwrap(), &mut back).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        store.open_blob(&Sha256Digest::of(b"nope")).await,
        Err(Error::NotFound { .. })
    ));
}

/// Size/digest mismatches and oversize blobs are `ArchiveRejected` and keep nothing.
pub async fn blob_mismatch_keeps_nothing(store: Arc<dyn Store>) {
    let data = b"some archive bytes".repeat(100);
    let real = Sha256Digest::of(&data);
    let wrong_size = ArchiveDescriptor {
        size_bytes: data.len() as u64 + 1,
        sha256: real.clone(),
    };
    let wrong_digest = ArchiveDescriptor {
        size_bytes: data.len() as u64,
        sha256: Sha256Digest::of(b"other"),
    };
    for (desc, max, reason) in [
        (Some(&wrong_size), 1 << 20, RejectReason::SizeMismatch),
        (Some(&wrong_digest), 1 << 20, RejectReason::DigestMismatch),
        (None, 100, RejectReason::TooLarge),
    ] {
        let err = store
            .put_blob(
                stream_of(&data),
                BlobExpect {
                    descriptor: desc,
                    max_bytes: max,
                },
            )
            .await
            .unwrap_err();
        match err {
            Error::ArchiveRejected { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("expected {reason:?}, got {other:?}"),
        }
        assert_eq!(
            store.has_blob(&real).await.unwrap(),
            None,
            "nothing kept after {reason:?}"
        );
    }
}

/// Transfers: chunks in any order, idempotent; `open_transfer` concatenates in order.
pub async fn transfer_chunks_any_order_idempotent(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(&data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    let chunk =
        |i: usize| Bytes::copy_from_slice(&data[i * 1000..((i + 1) * 1000).min(data.len())]);
    store.put_chunk(&t.transfer_id, 2, chunk(2)).await.unwrap();
    assert!(
        store.open_transfer(&t.transfer_id).await.is_err(),
        "incomplete transfer cannot be opened"
    );
    store.put_chunk(&t.transfer_id, 0, chunk(0)).await.unwrap();
    store.put_chunk(&t.transfer_id, 0, chunk(0)).await.unwrap();
    let status = store.get_transfer(&t.transfer_id).await.unwrap();
    assert_eq!(status.received, BTreeSet::from([0, 2]));
    assert_eq!(status.missing_ranges(), vec![(1000, 2000)]);
    let done = store.put_chunk(&t.transfer_id, 1, chunk(1)).await.unwrap();
    assert!(done.is_complete());
    let mut back = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_transfer(&t.transfer_id).await.unwrap(),
        &mut back,
    )
    .unwrap();
    assert_eq!(back, data);
    store.delete_transfer(&t.transfer_id).await.unwrap();
    assert!(matches!(
        store.get_transfer(&t.transfer_id).await,
        Err(Error::NotFound { .. })
    ));
}

/// `put_chunk` of a chunk already received with other bytes is `ChunkRejected` (conflict)
/// and leaves the stored chunk as it was; the same bytes again are accepted.
pub async fn transfer_chunk_conflict_keeps_the_stored_chunk(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let data: Vec<u8> = (0..2000u32).map(|i| (i % 241) as u8).collect();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(&data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    let first = Bytes::copy_from_slice(&data[1000..]);
    store
        .put_chunk(&t.transfer_id, 1, first.clone())
        .await
        .unwrap();
    let mut other = first.to_vec();
    other[500] ^= 0xff;
    let err = store
        .put_chunk(&t.transfer_id, 1, Bytes::from(other))
        .await
        .unwrap_err();
    match &err {
        Error::ChunkRejected { offset, reason, .. } => {
            assert_eq!(*offset, 1000, "the offset of the chunk");
            assert_eq!(*reason, crate::error::ChunkRejectReason::Conflict);
        }
        e => panic!("other bytes for a stored chunk must be a conflict, got {e:?}"),
    }
    // The same bytes again are fine, and what is stored is the first chunk.
    store.put_chunk(&t.transfer_id, 1, first).await.unwrap();
    store
        .put_chunk(&t.transfer_id, 0, Bytes::copy_from_slice(&data[..1000]))
        .await
        .unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_transfer(&t.transfer_id).await.unwrap(),
        &mut back,
    )
    .unwrap();
    assert_eq!(back, data, "the conflicting chunk changed nothing");
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

/// Concurrent commits to many runs each stay gap-free and verifiable.
pub async fn concurrent_commits_to_many_runs(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let run = created(&store, None).await;
            for i in 0..20u64 {
                store
                    .commit(
                        &run.id,
                        RunCommit {
                            expected_next_seq: i + 1,
                            events: vec![out("x")],
                            record: None,
                            evidence: None,
                            envelope: None,
                        },
                    )
                    .await
                    .unwrap();
            }
            run.id
        }));
    }
    for t in tasks {
        let id = t.await.unwrap();
        let events = store.list_events(&id, 0, 1000).await.unwrap();
        assert_eq!(events.len(), 20);
        verify_chain(&id, &events).unwrap();
    }
}

pub(super) fn any_blob() -> BlobExpect<'static> {
    BlobExpect {
        descriptor: None,
        max_bytes: 1 << 20,
    }
}

fn transfer_for(run: &RunId, data: &[u8]) -> TransferRecord {
    TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    }
}

/// Stores three blobs and a run naming the first as its archive and the second as an
/// artifact; returns (archive, artifact, loose) digests.
async fn named_and_loose_blobs(store: &Arc<dyn Store>) -> [Sha256Digest; 3] {
    let archive = store
        .put_blob(stream_of(b"an archive"), any_blob())
        .await
        .unwrap();
    let artifact = store
        .put_blob(stream_of(b"an artifact"), any_blob())
        .await
        .unwrap();
    let loose = store
        .put_blob(stream_of(b"a refused upload"), any_blob())
        .await
        .unwrap();
    let run = created(store, None).await;
    let mut record = run.clone();
    record.archive = Some(ArchiveInfo {
        size_bytes: archive.size_bytes,
        sha256: archive.sha256.clone(),
        upload: UploadKind::Direct,
        entries: 1,
        extracted_bytes: 1,
    });
    record.artifacts.push(Artifact {
        artifact_id: ArtifactId::new(),
        run_id: run.id.clone(),
        path: "out.txt".into(),
        kind: ArtifactKind::File,
        size_bytes: artifact.size_bytes,
        sha256: artifact.sha256.clone(),
        mode: 0o644,
        skipped: Vec::new(),
    });
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
    [archive.sha256, artifact.sha256, loose.sha256]
}

/// `discard_blob` deletes only a blob no run and no artifact names, and says so.
pub async fn discard_blob_deletes_only_unnamed_blobs(store: Arc<dyn Store>) {
    let [archive, artifact, loose] = named_and_loose_blobs(&store).await;
    for named in [&archive, &artifact] {
        assert!(
            !store.discard_blob(named).await.unwrap(),
            "a named blob is not discarded"
        );
        assert!(
            store.has_blob(named).await.unwrap().is_some(),
            "a named blob is kept"
        );
    }
    assert!(
        store.discard_blob(&loose).await.unwrap(),
        "an unnamed blob is discarded"
    );
    assert_eq!(store.has_blob(&loose).await.unwrap(), None, "and gone");
    assert!(matches!(
        store.open_blob(&loose).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        !store.discard_blob(&loose).await.unwrap(),
        "discarding it again deletes nothing"
    );
    // The same bytes can be stored again afterwards.
    store
        .put_blob(stream_of(b"a refused upload"), any_blob())
        .await
        .unwrap();
    assert!(store.has_blob(&loose).await.unwrap().is_some());
}

/// `list_transfers` lists every stored transfer, or one run's, and not deleted ones.
pub async fn list_transfers_by_run(store: Arc<dyn Store>) {
    let a = created(&store, None).await;
    let b = created(&store, None).await;
    let ta = transfer_for(&a.id, &[1; 1500]);
    let tb1 = transfer_for(&b.id, &[2; 10]);
    let tb2 = transfer_for(&b.id, &[3; 10]);
    for t in [&ta, &tb1, &tb2] {
        store.create_transfer(t).await.unwrap();
    }
    store
        .put_chunk(&ta.transfer_id, 0, Bytes::from(vec![1; 1000]))
        .await
        .unwrap();
    let ids = |ts: Vec<TransferRecord>| -> BTreeSet<TransferId> {
        ts.into_iter().map(|t| t.transfer_id).collect()
    };
    let all = store.list_transfers(None).await.unwrap();
    let listed_a = all
        .iter()
        .find(|t| t.transfer_id == ta.transfer_id)
        .unwrap();
    assert_eq!(
        listed_a.received,
        BTreeSet::from([0]),
        "listed with its chunks"
    );
    assert_eq!(
        listed_a.descriptor, ta.descriptor,
        "listed with its descriptor"
    );
    assert_eq!(
        ids(all),
        BTreeSet::from([
            ta.transfer_id.clone(),
            tb1.transfer_id.clone(),
            tb2.transfer_id.clone()
        ])
    );
    assert_eq!(
        ids(store.list_transfers(Some(&b.id)).await.unwrap()),
        BTreeSet::from([tb1.transfer_id.clone(), tb2.transfer_id.clone()])
    );
    store.delete_transfer(&tb1.transfer_id).await.unwrap();
    assert_eq!(
        ids(store.list_transfers(Some(&b.id)).await.unwrap()),
        BTreeSet::from([tb2.transfer_id.clone()]),
        "a deleted transfer is not listed"
    );
    assert!(
        store
            .list_transfers(Some(&RunId::new()))
            .await
            .unwrap()
            .is_empty()
    );
}

/// `collect_garbage` keeps named blobs always and fresh blobs and transfers within their
/// ages; past the ages it deletes unnamed blobs and idle transfers, and reports them.
pub async fn collect_garbage_respects_names_and_ages(store: Arc<dyn Store>) {
    let [archive, artifact, loose] = named_and_loose_blobs(&store).await;
    let run = created(&store, None).await;
    let t = transfer_for(&run.id, &[7; 10]);
    store.create_transfer(&t).await.unwrap();

    let patient = GcPolicy::default();
    let report = store.collect_garbage(&patient).await.unwrap();
    assert_eq!(report.blobs_deleted, 0, "fresh blobs are kept: {report:?}");
    assert_eq!(
        report.transfers_deleted, 0,
        "fresh transfers are kept: {report:?}"
    );
    assert!(store.has_blob(&loose).await.unwrap().is_some());
    assert!(store.get_transfer(&t.transfer_id).await.is_ok());

    let zero = GcPolicy {
        blob_grace: Duration::ZERO,
        transfer_ttl: Duration::ZERO,
        temp_ttl: Duration::ZERO,
    };
    let report = store.collect_garbage(&zero).await.unwrap();
    assert_eq!(report.blobs_deleted, 1, "only the unnamed blob: {report:?}");
    assert_eq!(report.blob_bytes_freed, b"a refused upload".len() as u64);
    assert_eq!(report.transfers_deleted, 1, "{report:?}");
    assert_eq!(store.has_blob(&loose).await.unwrap(), None);
    assert!(
        store.has_blob(&archive).await.unwrap().is_some(),
        "archive kept"
    );
    assert!(
        store.has_blob(&artifact).await.unwrap().is_some(),
        "artifact kept"
    );
    assert!(matches!(
        store.get_transfer(&t.transfer_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(store.list_transfers(None).await.unwrap().is_empty());
}
