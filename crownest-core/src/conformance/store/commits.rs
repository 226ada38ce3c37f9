//! Commits: the sealed, gap-free chain, conflicts, the terminal rules, evidence and its envelope, the cancel flag, event windows, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::error::Error;
use crate::event::verify_chain;
use crate::ids::RunId;
use crate::status::RunStatus;
use crate::store::{RunCommit, Store};

use super::*;

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
