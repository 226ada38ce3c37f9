//! Reading runs: records, event windows, evidence, artifacts, and waiting for the end.

use super::WorkspaceRuns;
use crate::error::Result;
use crate::event::Event;
use crate::evidence::EvidenceBundle;
use crate::ids::{ArtifactId, RunId};
use crate::run::{Artifact, RunRecord};
use crate::signing::{DsseEnvelope, HostPublicKey};
use crate::store::RunQuery;

impl WorkspaceRuns {
    /// One run.
    pub async fn get(&self, id: &RunId) -> Result<RunRecord> {
        self.inner.store.get_run(id).await
    }

    /// Runs, newest first.
    pub async fn list(&self, query: &RunQuery) -> Result<Vec<RunRecord>> {
        self.inner.store.list_runs(query).await
    }

    /// A bounded window of events with `seq > after_seq` (at most `limit`, capped at 1000).
    pub async fn list_events(
        &self,
        id: &RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner
            .store
            .list_events(id, after_seq, limit.clamp(1, 1000))
            .await
    }

    /// The Evidence Bundle; `Error::NotTerminal` before the run ended.
    pub async fn evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        self.inner.store.get_evidence(id).await
    }

    /// The DSSE envelope signed in the run's terminal commit, if the engine that ended it
    /// had a host key; `Error::NotTerminal` before the run ended.
    pub async fn evidence_envelope(&self, id: &RunId) -> Result<Option<DsseEnvelope>> {
        self.inner.store.get_evidence_envelope(id).await
    }

    /// The public half of the key that signs evidence in terminal commits, if any.
    pub fn host_public_key(&self) -> Option<HostPublicKey> {
        self.inner.host_key.as_ref().map(|k| k.public_key())
    }

    /// One artifact's record.
    pub async fn artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        self.inner.store.get_artifact(id).await
    }

    /// Waits until the run is terminal and returns its final record.
    ///
    /// It reads only the run record: woken by this engine's commits, and polling
    /// (`subscribe_poll_interval`) for runs driven by another process.
    pub async fn wait(&self, id: &RunId) -> Result<RunRecord> {
        let mut rx = self.watch_run(id);
        let poll = self.inner.config.subscribe_poll_interval;
        loop {
            let run = self.get(id).await?;
            if run.status.is_terminal() {
                drop(rx);
                self.release_watch(id);
                return Ok(run);
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The sender went away with the terminal commit: poll from now on.
                        tokio::time::sleep(poll).await;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
