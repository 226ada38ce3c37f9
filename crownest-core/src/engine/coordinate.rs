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
    /// Starts the background tasks of an engine on a shared store, each holding the engine
    /// weakly (they end with it), and each on its own so that none waits behind another:
    ///
    /// * the lease: renewed every third of `lease_ttl`;
    /// * with `reclaims`, the reclaim pass ([`Self::reclaim`]) at the same rhythm;
    /// * with `claim_from_queue`, claiming queued runs for free slots when woken (a local
    ///   queueing or a freed slot, the store's notification, or every
    ///   `claim_poll_interval`).
    pub(super) fn spawn_coordinator(&self, reclaims: bool) {
        let config = &self.inner.config;
        let beat = (config.lease_ttl / 3).max(std::time::Duration::from_millis(50));
        every(
            &self.inner,
            beat,
            |engine| async move { engine.renew().await },
        );
        if reclaims {
            every(&self.inner, beat, |engine| async move {
                if let Err(e) = engine.reclaim().await {
                    tracing::warn!(error = %e.chain(), "the reclaim pass failed");
                }
            });
        }
        if !config.claim_from_queue {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let poll = config.claim_poll_interval;
        let mut notices = self
            .inner
            .store
            .coordination()
            .and_then(|c| c.queue_notices());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let wake = async move { inner.claim_wake.notified().await };
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = notice => {}
                        () = wake => {}
                    }
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = (WorkspaceRuns { inner }).claim_queued().await {
                    tracing::warn!(error = %e.chain(), "claiming queued runs failed");
                }
            }
        });
    }

    /// Renews the lease.
    async fn renew(&self) {
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
            Err(e) => tracing::warn!(error = %e.chain(), "renewing the lease failed"),
        }
    }

    /// Claims queued runs while this engine has free slots, and drives each.
    pub(super) async fn claim_queued(&self) -> Result<()> {
        let Some(coordination) = self.inner.store.coordination() else {
            return Ok(());
        };
        let backends: Vec<String> = self.inner.backends.keys().cloned().collect();
        loop {
            let probe = self.inner.claim_probe.lock().await;
            // The slot first: a run is claimed only when it can start at once.
            let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                return Ok(());
            };
            let claimed = coordination
                .claim_queued(&self.inner.owner, &backends, 1)
                .await?
                .into_iter()
                .next();
            drop(probe);
            let Some(record) = claimed else {
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

/// Runs `step` on the engine every `period` (the first at once) until the engine is gone.
fn every<F, Fut>(inner: &Arc<Inner>, period: std::time::Duration, step: F)
where
    F: Fn(WorkspaceRuns) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            step(WorkspaceRuns { inner }).await;
        }
    });
}

impl Inner {
    /// Whether runs of this engine may wait in the shared queue for any engine.
    pub(super) fn shares_queue(&self) -> bool {
        self.store.coordination().is_some()
    }
}
