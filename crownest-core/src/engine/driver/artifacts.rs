//! Collecting the requested artifacts after the command: each into a content-addressed
//! blob with an `artifact_collected` event, or an `artifact_error` (with a hint when the path
//! exists under the run's working directory).

use futures::StreamExt as _;

use crate::artifact::CollectedArtifact;
use crate::backend::Sandbox;
use crate::error::{Error, Result};
use crate::event::{ArtifactErrorReason, EventKind, NewEvent};
use crate::ids::ArtifactId;
use crate::run::{Artifact, ArtifactErrorRecord};
use crate::store::BlobExpect;

use super::Driver;

impl Driver {
    pub(super) fn missing_required(&self) -> Option<String> {
        self.record
            .spec
            .artifacts
            .iter()
            .filter(|a| a.required)
            .find(|a| !self.record.artifacts.iter().any(|c| c.path == a.path))
            .map(|a| a.path.clone())
    }

    pub(super) async fn collect_artifacts(
        &mut self,
        sandbox: &dyn Sandbox,
        materialized: bool,
    ) -> Result<()> {
        let requests = self.record.spec.artifacts.clone();
        let mut total: u64 = 0;
        for req in requests {
            let remaining = self
                .record
                .limits
                .artifact_bytes_total
                .saturating_sub(total);
            let max = self.record.limits.artifact_bytes_each.min(remaining);
            let result = if materialized {
                sandbox.collect_artifact(&req.path, max).await
            } else {
                Err(crate::artifact::ArtifactFailure::new(
                    ArtifactErrorReason::NotFound,
                    "the workspace was never materialized",
                ))
            };
            let stored = match result {
                Ok(collected) => self.store_artifact(&req.path, collected, max).await,
                Err(f) if materialized && f.reason == ArtifactErrorReason::NotFound => {
                    Err(self.under_cwd_hint(sandbox, &req.path, f).await)
                }
                Err(f) => Err(f),
            };
            match stored {
                Ok(artifact) => {
                    total += artifact.size_bytes;
                    let event = NewEvent::now(EventKind::ArtifactCollected {
                        artifact_id: artifact.artifact_id.clone(),
                        path: artifact.path.clone(),
                        size_bytes: artifact.size_bytes,
                        sha256: artifact.sha256.clone(),
                        mode: artifact.mode,
                        skipped: artifact.skipped.clone(),
                    });
                    self.record.artifacts.push(artifact);
                    self.commit(vec![event]).await?;
                }
                Err(f) => {
                    let event = NewEvent::now(EventKind::ArtifactError {
                        path: req.path.clone(),
                        reason: f.reason,
                        message: f.message.clone(),
                    });
                    self.record.artifact_errors.push(ArtifactErrorRecord {
                        path: req.path.clone(),
                        reason: f.reason,
                        message: f.message,
                    });
                    self.commit(vec![event]).await?;
                }
            }
        }
        Ok(())
    }

    /// Artifact paths are relative to the workspace root, not to `cwd`: when one is not
    /// found but exists under the run's working directory, the failure says so and names
    /// the path to ask for (a probe with `max_bytes = 0`, so nothing is read).
    async fn under_cwd_hint(
        &self,
        sandbox: &dyn Sandbox,
        path: &str,
        mut failure: crate::artifact::ArtifactFailure,
    ) -> crate::artifact::ArtifactFailure {
        use crate::spec::WorkspacePath;
        let (Ok(cwd), Ok(path)) = (
            WorkspacePath::parse(&self.record.spec.cwd),
            WorkspacePath::parse_entry(path),
        ) else {
            return failure;
        };
        if cwd.is_root() {
            return failure;
        }
        let candidate = format!("{cwd}/{path}");
        let exists = match sandbox.collect_artifact(&candidate, 0).await {
            Ok(_) => true,
            Err(f) => f.reason != ArtifactErrorReason::NotFound,
        };
        if exists {
            failure.message = format!(
                "{}; artifact paths are relative to the workspace root, not to the working \
                 directory {cwd:?}: {candidate:?} exists (ask for that path)",
                failure.message
            );
        }
        failure
    }

    async fn store_artifact(
        &self,
        path: &str,
        collected: CollectedArtifact,
        max: u64,
    ) -> std::result::Result<Artifact, crate::artifact::ArtifactFailure> {
        use crate::artifact::ArtifactFailure;
        if collected.size_bytes > max {
            return Err(ArtifactFailure::new(
                ArtifactErrorReason::TooLarge,
                format!(
                    "{path:?} is {} bytes, over the {max} byte limit",
                    collected.size_bytes
                ),
            ));
        }
        let stream = crate::engine::intake::reader_stream(Box::new(std::io::Read::take(
            collected.reader,
            max + 1,
        )));
        let expect = BlobExpect {
            descriptor: None,
            max_bytes: max,
        };
        let hashed = stream.boxed();
        let info = self
            .engine
            .store()
            .put_blob(hashed, expect)
            .await
            .map_err(|e| match e {
                Error::ArchiveRejected { .. } => ArtifactFailure::new(
                    ArtifactErrorReason::TooLarge,
                    format!("{path:?} grew over the {max} byte limit while being read"),
                ),
                e => ArtifactFailure::new(
                    ArtifactErrorReason::NotFound,
                    format!("storing {path:?} failed: {}", e.chain()),
                ),
            })?;
        Ok(Artifact {
            artifact_id: ArtifactId::new(),
            run_id: self.record.id.clone(),
            path: path.to_owned(),
            kind: collected.kind,
            size_bytes: info.size_bytes,
            sha256: info.sha256,
            mode: collected.mode,
            skipped: collected.skipped,
        })
    }
}
