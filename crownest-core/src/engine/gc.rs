//! The engine's garbage collection: one pass ([`WorkspaceRuns::collect_garbage`]) and a
//! periodic task for long-lived hosts ([`WorkspaceRuns::spawn_periodic_gc`]).

use std::time::Duration;

use tokio::task::JoinHandle;

use super::WorkspaceRuns;
use crate::error::Result;
use crate::gc::GcReport;

/// A periodic gc task ([`WorkspaceRuns::spawn_periodic_gc`]); dropping it stops it.
#[derive(Debug)]
pub struct GcTask {
    handle: JoinHandle<()>,
}

impl GcTask {
    /// Stops the task (a pass in progress is abandoned between two store calls; every
    /// store call is atomic, so nothing is left half-done).
    pub fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for GcTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl WorkspaceRuns {
    /// One garbage-collection pass, in this order:
    ///
    /// 1. runs still in `awaiting_archive` past `awaiting_archive_ttl` end `canceled`, with
    ///    their evidence ([`WorkspaceRuns::expire_awaiting_archive`]);
    /// 2. staged transfers whose run is gone or no longer awaits an archive are discarded
    ///    (normally done when the run moves on; this catches what a crash left);
    /// 3. the store's own pass with the `gc` ages ([`crate::Store::collect_garbage`]):
    ///    blobs no run names past `blob_grace`, transfers idle past `transfer_ttl`, stray
    ///    temporary files.
    ///
    /// Safe beside running runs and beside other processes' engines on the same store.
    /// Afterwards the run and blob gauges are re-read from the store
    /// ([`WorkspaceRuns::refresh_usage`]).
    pub async fn collect_garbage(&self) -> Result<GcReport> {
        let expired_runs = self.expire_awaiting_archive().await?;
        let transfers_discarded = self.discard_stray_transfers().await?;
        let store = self
            .inner
            .store
            .collect_garbage(&self.inner.config.gc)
            .await?;
        metrics::counter!(super::observe::names::GC_BLOBS_DELETED).increment(store.blobs_deleted);
        // Catch up with what other processes sharing the store did (see `observe.rs`).
        self.refresh_usage().await;
        Ok(GcReport {
            expired_runs,
            transfers_discarded,
            store,
        })
    }

    /// Runs [`WorkspaceRuns::collect_garbage`] now and then every `interval` (at least 1 ms)
    /// on a tokio task, handing each pass's result to `on_pass` (a failed pass does not stop
    /// the task). Passes never overlap: a slow pass delays the next one.
    pub fn spawn_periodic_gc<F>(&self, interval: Duration, on_pass: F) -> GcTask
    where
        F: Fn(Result<GcReport>) + Send + 'static,
    {
        let engine = self.clone();
        let interval = interval.max(Duration::from_millis(1));
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let pass = engine.collect_garbage().await;
                on_pass(pass);
            }
        });
        GcTask { handle }
    }
}
