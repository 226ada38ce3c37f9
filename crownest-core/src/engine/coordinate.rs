//! Engines sharing one store ([`crate::store::coordination`]): the lease heartbeat, the
//! reclaim pass that fails the runs of engines whose lease expired, and claiming runs
//! queued for any engine.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{OwnedSemaphorePermit, watch};

use super::{Inner, LiveRun, WorkspaceRuns, driver, lock};
use crate::error::{Error, Result};
use crate::lifecycle::Input;
use crate::run::RunRecord;
use crate::store::coordination::LeaseRenewal;

impl WorkspaceRuns {
    /// Starts the background task of an engine on a shared store: every third of
    /// `lease_ttl` it renews the lease and runs a reclaim pass ([`Self::reclaim`]); when
    /// woken (a local queueing, the store's notification, or every `claim_poll_interval`)
    /// it claims queued runs for its free slots. The task holds the engine weakly and ends
    /// with it.
    pub(super) fn spawn_coordinator(&self, reclaims: bool) {
        let weak = Arc::downgrade(&self.inner);
        let config = &self.inner.config;
        let beat = (config.lease_ttl / 3).max(std::time::Duration::from_millis(50));
        let poll = config.claim_poll_interval;
        let claims = config.claim_from_queue;
        let mut notices = self
            .inner
            .store
            .coordination()
            .and_then(|c| c.queue_notices());
        tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(beat);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut claim_tick = tokio::time::interval(poll);
            claim_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let notice = async {
                    match notices.as_mut() {
                        Some(rx) => {
                            if rx.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let woken = {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let wake = async move { inner.claim_wake.notified().await };
                    tokio::select! {
                        _ = heartbeat.tick() => false,
                        _ = claim_tick.tick() => true,
                        () = notice => true,
                        () = wake => true,
                    }
                };
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let engine = WorkspaceRuns { inner };
                if !woken {
                    engine.heartbeat(reclaims).await;
                } else if claims && let Err(e) = engine.claim_queued().await {
                    tracing::warn!(error = %e.chain(), "claiming queued runs failed");
                }
            }
        });
    }

    /// Renews the lease, then (with `reclaims`) fails the runs of engines whose lease
    /// expired.
    async fn heartbeat(&self, reclaims: bool) {
        let Some(coordination) = self.inner.store.coordination() else {
            return;
        };
        match coordination
            .renew_lease(&self.inner.instance, self.inner.config.lease_ttl)
            .await
        {
            Ok(LeaseRenewal::Held) => {}
            Ok(LeaseRenewal::Lapsed) => tracing::warn!(
                instance = %self.inner.instance,
                "this engine's lease had expired before it was renewed: other engines may \
                 have failed its runs (their drivers stop when they see it)"
            ),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "renewing the lease failed");
                return;
            }
        }
        if reclaims && let Err(e) = self.reclaim().await {
            tracing::warn!(error = %e.chain(), "the reclaim pass failed");
        }
    }

    /// Claims queued runs while this engine has free slots, and drives each.
    pub(super) async fn claim_queued(&self) -> Result<()> {
        let Some(coordination) = self.inner.store.coordination() else {
            return Ok(());
        };
        let backends: Vec<String> = self.inner.backends.keys().cloned().collect();
        loop {
            // The slot first: a run is claimed only when it can start at once.
            let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                return Ok(());
            };
            let Some(record) = coordination
                .claim_queued(&self.inner.owner, &backends, 1)
                .await?
                .into_iter()
                .next()
            else {
                return Ok(());
            };
            self.drive_claimed(record, permit).await?;
        }
    }

    /// Moves a claimed run to `starting` and spawns its driver. A run canceled between the
    /// claim and this commit is left as the cancel ended it.
    async fn drive_claimed(
        &self,
        mut record: RunRecord,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        let id = record.id.clone();
        let run_lock = self.run_lock(&id);
        let _guard = run_lock.lock().await;
        let backend = self.backend(&record.backend)?.clone();
        match self
            .set_status(&mut record, Input::SlotAcquired, Vec::new())
            .await
        {
            Ok(()) => {}
            Err(Error::Conflict { .. } | Error::InvalidTransition { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.spawn_driver(record, backend, Default::default(), Some(permit));
        Ok(())
    }

    /// Spawns the driver of a run this engine now owns (the only writer of its events).
    pub(super) fn spawn_driver(
        &self,
        record: RunRecord,
        backend: Arc<dyn crate::backend::SandboxBackend>,
        secrets: std::collections::BTreeMap<String, crate::secret::SecretValue>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        self.inner
            .metrics
            .runs_started
            .fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        lock(&self.inner.live).insert(record.id.clone(), LiveRun { cancel: cancel_tx });
        let engine = self.clone();
        tokio::spawn(async move {
            let id = record.id.clone();
            driver::Driver::new(engine.clone(), record, backend, secrets, cancel_rx, permit)
                .run()
                .await;
            lock(&engine.inner.live).remove(&id);
            // A slot is free again: another queued run may be claimed.
            engine.inner.claim_wake.notify_one();
        });
    }
}

impl Inner {
    /// Whether runs of this engine may wait in the shared queue for any engine.
    pub(super) fn shares_queue(&self) -> bool {
        self.store.coordination().is_some()
    }
}
