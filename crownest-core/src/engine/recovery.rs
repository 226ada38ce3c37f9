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
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let live_here: Vec<RunId> = lock(&self.inner.live).keys().cloned().collect();
        let now = Timestamp::now();
        let mut orphaned = Vec::new();
        for run in self.inner.store.list_unfinished().await? {
            let owner = match &run.owner {
                Some(o) if o.instance == self.inner.instance => Liveness::Alive,
                Some(o) => o.liveness(),
                None => Liveness::Gone,
            };
            if ownership::is_orphan(owner, Some(run.id.as_str()), None, &live_here, now) {
                orphaned.push(run);
            } else {
                report.live_elsewhere.push(run.id.clone());
            }
        }
        let mut failed_sweeps = BTreeMap::new();
        for (name, backend) in &self.inner.backends {
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
            let mut message = format!(
                "the process driving this run (pid {}) went away while it was {}",
                run.owner.as_ref().map_or(0, |o| o.pid),
                run.status
            );
            if let Some(fate) = sandbox_fate(&mut run, &report.swept, &failed_sweeps) {
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
        None => format!(
            "its sandbox {} was not found by the {backend} sweep (it may never have been made, or was removed before)",
            sb.id
        ),
    })
}
