//! What goes into the text columns comes back exactly: output with NUL and other control
//! characters (which `jsonb` would refuse), and idempotency keys of any characters, also
//! when two instances create with the same key at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crownest_core::event::{EventKind, verify_chain};
use crownest_core::store::{CreateOutcome, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_with_nul_and_control_characters_round_trips() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let run = t.create_run(new_run()).await.unwrap().into_run();
    let text = "a\u{0}b\u{1}\u{7f}\t\r\n\u{fffd} é 🦀 \\u0000";
    let sealed = t
        .commit(&run.id, events_commit(1, vec![out(text), out("")]))
        .await
        .unwrap();
    let events = t.list_events(&run.id, 0, 10).await.unwrap();
    assert_eq!(events, sealed);
    match &events[0].kind {
        EventKind::Stdout(c) => assert_eq!(c.data.as_deref(), Some(text)),
        other => panic!("{other:?}"),
    }
    verify_chain(&run.id, &events).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_any_characters_and_racing_creates() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    let other = t.reopen().await;
    for key in ["plain", "with\u{0}nul", "ключ 🔑", ""] {
        let mut a = new_run();
        a.spec.idempotency_key = Some(key.to_owned());
        let mut b = new_run();
        b.spec.idempotency_key = Some(key.to_owned());
        let (ra, rb) = tokio::join!(t.create_run(a), other.create_run(b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let created = [&ra, &rb]
            .iter()
            .filter(|o| matches!(o, CreateOutcome::Created(_)))
            .count();
        assert_eq!(created, 1, "{key:?}: exactly one create wins");
        assert_eq!(
            ra.into_run().id,
            rb.into_run().id,
            "{key:?}: both name the same run"
        );
    }
}
