//! Reading a collected artifact's bytes through the engine (the HTTP layer, the CLI and
//! tests use this; none of them reaches into the store).

use crate::error::Result;
use crate::ids::ArtifactId;
use crate::run::Artifact;
use crate::store::BlobReader;

use super::WorkspaceRuns;

impl WorkspaceRuns {
    /// One artifact's record and a blocking reader of its stored bytes (a file's content,
    /// or the tar of a directory artifact): `size_bytes` bytes whose sha256 is `sha256`.
    /// `Error::NotFound` for an unknown artifact.
    pub async fn open_artifact(&self, id: &ArtifactId) -> Result<(Artifact, BlobReader)> {
        let artifact = self.inner.store.get_artifact(id).await?;
        let reader = self.inner.store.open_blob(&artifact.sha256).await?;
        Ok((artifact, reader))
    }
}
