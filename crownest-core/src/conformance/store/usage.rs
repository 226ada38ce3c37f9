//! Store conformance: [`Store::usage`] (the aggregate behind the `/metrics` gauges).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use super::{any_blob, created, stream_of, terminal_commit};
use crate::status::RunStatus;
use crate::store::Store;

/// `usage` counts every stored run once under its current status, follows commits and
/// deletions, and (when it reports them) counts each stored blob's bytes once.
pub async fn usage_counts_every_run_once(store: Arc<dyn Store>) {
    let empty = store.usage().await.expect("usage");
    assert_eq!(
        empty.runs_by_status.values().sum::<u64>(),
        0,
        "a new store has no runs: {empty:?}"
    );
    let a = created(&store, None).await;
    let _b = created(&store, None).await;
    let c = created(&store, None).await;
    for run in [&a, &c] {
        store.commit(&run.id, terminal_commit(run)).await.unwrap();
    }
    let usage = store.usage().await.unwrap();
    let count = |s: RunStatus| usage.runs_by_status.get(&s).copied().unwrap_or(0);
    assert_eq!(count(RunStatus::AwaitingArchive), 1, "{usage:?}");
    assert_eq!(count(RunStatus::Succeeded), 2, "{usage:?}");
    assert_eq!(usage.runs_by_status.values().sum::<u64>(), 3, "{usage:?}");

    store.delete_run(&a.id).await.unwrap();
    let after = store.usage().await.unwrap();
    assert_eq!(
        after.runs_by_status.get(&RunStatus::Succeeded).copied(),
        Some(1),
        "a deleted run is not counted: {after:?}"
    );

    if let Some(before) = usage.blob_bytes {
        store
            .put_blob(stream_of(&[7u8; 1500]), any_blob())
            .await
            .unwrap();
        // The same bytes again are stored once.
        store
            .put_blob(stream_of(&[7u8; 1500]), any_blob())
            .await
            .unwrap();
        let grown = store.usage().await.unwrap().blob_bytes;
        assert_eq!(grown, Some(before + 1500), "blob bytes counted once");
    }
}
