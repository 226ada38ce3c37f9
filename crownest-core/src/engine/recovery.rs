//! Recovery: reclaiming the runs whose owner is gone, and the backends' sweeps.

use std::collections::BTreeMap;

use super::{WorkspaceRuns, lock};
use crate::error::{Error, Result};
use crate::event::{EventKind, Failure, FailureKind};
use crate::ids::RunId;
use crate::lifecycle::Input;
use crate::ownership::{self, Liveness};
use crate::run::RunRecord;
use crate::time::Timestamp;

/// What [`WorkspaceRuns::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Runs failed with `host_restarted`.
    pub reclaimed: Vec<RunId>,
    /// Runs left alone because their owner is alive.
    pub live_elsewhere: Vec<RunId>,
    /// Sandboxes destroyed by `sweep_orphans`, per backend.
    pub swept: Vec<(String, String)>,
}

impl WorkspaceRuns {
    /// Recovery: every unfinished run whose owner is gone ([`ownership::is_orphan`]) ends
    /// `failed` / `host_restarted` with evidence, after every backend swept the sandboxes of
    /// runs that are not live. Runs driven by a live process (this one or another) are left
    /// alone; runs are never resumed silently.
    ///
    /// The sweeps run before the reclaimed runs are ended, so a reclaimed run's record and
    /// evidence say its sandbox was destroyed only when a sweep reported removing it (or a
    /// `destroy` had already recorded it); otherwise they say it was not destroyed and the
    /// failure message says why (kept, not found by the sweep, the sweep failed).
    ///
    /// On a shared store ([`crate::store::coordination`]) an owner is judged by its lease,
    /// not by this host's process table, and a run waiting in the shared queue (`queued`,
    /// owned by nobody) is not orphaned.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.recover_with(true).await
    }

    /// The reclaim pass of an engine on a shared store (every third of `lease_ttl`):
    /// recovery without the backends' sweeps.
    pub(super) async fn reclaim(&self) -> Result<RecoveryReport> {
        self.recover_with(false).await
    }

    async fn recover_with(&self, sweep: bool) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let live_here: Vec<RunId> = lock(&self.inner.live).keys().cloned().collect();
        let now = Timestamp::now();
        let unfinished = self.inner.store.list_unfinished().await?;
        let leases = match self.inner.store.coordination() {
            Some(coordination) => {
                let mut instances: Vec<String> = unfinished
                    .iter()
                    .filter_map(|r| r.owner.as_ref().map(|o| o.instance.clone()))
                    .filter(|i| *i != self.inner.instance)
                    .collect();
                instances.sort();
                instances.dedup();
                Some(coordination.lease_liveness(&instances).await?)
            }
            None => None,
        };
        let mut orphaned = Vec::new();
        for run in unfinished {
            let owner = match (&run.owner, &leases) {
                (Some(o), _) if o.instance == self.inner.instance => Liveness::Alive,
                (Some(o), Some(leases)) => {
                    leases.get(&o.instance).copied().unwrap_or(Liveness::Gone)
                }
                (Some(o), None) => o.liveness(),
                (None, Some(_)) if run.status == crate::status::RunStatus::Queued => {
                    Liveness::Alive
                }
                (None, _) => Liveness::Gone,
            };
            if ownership::is_orphan(owner, Some(run.id.as_str()), None, &live_here, now) {
                orphaned.push(run);
            } else {
                report.live_elsewhere.push(run.id.clone());
            }
        }
        let mut failed_sweeps = BTreeMap::new();
        let backends = if sweep {
            self.inner.backends.iter().collect()
        } else {
            Vec::new()
        };
        for (name, backend) in backends {
            let swept = backend.sweep_orphans(&report.live_elsewhere).await;
            super::observe::swept(name, &swept);
            match swept {
                Ok(swept) => report
                    .swept
                    .extend(swept.into_iter().map(|s| (name.clone(), s))),
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e.chain(), "sweep_orphans failed");
                    failed_sweeps.insert(name.clone(), e.chain());
                }
            }
        }
        for mut run in orphaned {
            let mut message = match (&run.owner, &leases) {
                (Some(o), Some(_)) => format!(
                    "the engine driving this run ({} on pid {}) stopped renewing its lease \
                     while the run was {}",
                    o.instance, o.pid, run.status
                ),
                _ => format!(
                    "the process driving this run (pid {}) went away while it was {}",
                    run.owner.as_ref().map_or(0, |o| o.pid),
                    run.status
                ),
            };
            if let Some(fate) =
                sandbox_fate(&mut run, &report.swept, &failed_sweeps, leases.is_some())
            {
                message.push_str("; ");
                message.push_str(&fate);
            }
            let failure = Failure::new(FailureKind::HostRestarted, message);
            // What the host had recorded of the sandbox before it went away (the evidence
            // must say what the chain says).
            let (identity, isolation) = self.recorded_environment(&run.id).await?;
            match self
                .terminate(
                    &mut run,
                    Input::HostRestarted,
                    Some(failure),
                    identity,
                    isolation,
                    None,
                )
                .await
            {
                Ok(()) => report.reclaimed.push(run.id.clone()),
                // Another process reclaimed it first.
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// The identity and isolation of the run's last `environment` event, if it has one.
    pub(super) async fn recorded_environment(
        &self,
        id: &RunId,
    ) -> Result<(
        Option<crate::backend::TemplateIdentity>,
        Option<crate::backend::IsolationReport>,
    )> {
        let mut found = (None, None);
        let mut after = 0;
        loop {
            let batch = self.inner.store.list_events(id, after, 1000).await?;
            let Some(last) = batch.last() else {
                return Ok(found);
            };
            after = last.seq;
            for e in batch {
                if let EventKind::Environment {
                    identity,
                    isolation,
                } = e.kind
                {
                    found = (identity, Some(isolation));
                }
            }
        }
    }
}

/// Sets what is true of a reclaimed run's sandbox after the sweeps: destroyed only when its
/// backend's sweep reported removing it (or a `destroy` had recorded it already). Returns a
/// sentence for the failure message when there is something to say.
fn sandbox_fate(
    run: &mut RunRecord,
    swept: &[(String, String)],
    failed_sweeps: &BTreeMap<String, String>,
    shared: bool,
) -> Option<String> {
    let backend = run.backend.clone();
    let sb = run.sandbox.as_mut()?;
    if sb.destroyed {
        return None;
    }
    if swept.iter().any(|(b, id)| *b == backend && *id == sb.id) {
        sb.destroyed = true;
        return Some(format!(
            "its sandbox {} was destroyed by the {backend} sweep",
            sb.id
        ));
    }
    Some(match failed_sweeps.get(&backend) {
        Some(e) => format!(
            "its sandbox {} was not destroyed: the {backend} sweep failed: {e}",
            sb.id
        ),
        None if sb.kept => format!(
            "its sandbox {} is kept and was left to its keep deadline",
            sb.id
        ),
        // On a shared store the sandbox may be on another host: only an engine there can
        // remove it (its recovery sweeps what no live owner holds).
        None if shared => format!(
            "its sandbox {} was not destroyed by this host: it is where the lost engine ran, \
             and the next engine opened there sweeps it",
            sb.id
        ),
        None => format!(
            "its sandbox {} was not found by the {backend} sweep (it may never have been made, or was removed before)",
            sb.id
        ),
    })
}
