//! The template image: its identity (image id + `crownest.image-key` label).

use bollard::Docker;
use crownest_core::TemplateIdentity;

use crate::error::{DockerError, is_not_found};

/// The label `scripts/build-docker-image.sh` puts on the image: a hash of its inputs.
pub const IMAGE_KEY_LABEL: &str = "crownest.image-key";

/// What the template image resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageInfo {
    /// The reference asked for (`crownest/python-node:latest`).
    pub(crate) reference: String,
    /// `sha256:...` image id: containers are created from this id, not the tag, so the
    /// identity in the evidence is exactly what ran even if the tag moves meanwhile.
    pub(crate) id: String,
    /// The `crownest.image-key` label, when present.
    pub(crate) key: Option<String>,
    /// `python3.path`, `python3.version`, `node.path`, `node.version`, as measured in the
    /// image (see `interpreters.rs`).
    pub(crate) interpreters: std::collections::BTreeMap<String, String>,
}

impl ImageInfo {
    /// The template identity recorded in evidence.
    pub(crate) fn identity(&self) -> TemplateIdentity {
        let mut id = TemplateIdentity::default()
            .with("image", self.reference.clone())
            .with("imageId", self.id.clone());
        if let Some(key) = &self.key {
            id = id.with("imageKey", key.clone());
        }
        for (k, v) in &self.interpreters {
            id = id.with(k.clone(), v.clone());
        }
        id
    }
}

/// Inspects the template image; a missing image is [`DockerError::ImageMissing`].
pub(crate) async fn inspect(docker: &Docker, reference: &str) -> Result<ImageInfo, DockerError> {
    let image = docker.inspect_image(reference).await.map_err(|e| {
        if is_not_found(&e) {
            DockerError::ImageMissing {
                image: reference.to_owned(),
            }
        } else {
            DockerError::Api {
                operation: "inspect image",
                source: e,
            }
        }
    })?;
    let id = image.id.filter(|i| !i.is_empty()).ok_or_else(|| {
        DockerError::State(format!("image {reference} has no id in its inspect answer"))
    })?;
    let key = image
        .config
        .and_then(|c| c.labels)
        .and_then(|mut l| l.remove(IMAGE_KEY_LABEL));
    Ok(ImageInfo {
        reference: reference.to_owned(),
        id,
        key,
        interpreters: std::collections::BTreeMap::new(),
    })
}
