//! Refusing a spec whose template its backend does not offer, at `create`.
//!
//! Without this check an unknown template is found only when the driver asks the backend
//! for a sandbox, and the run ends `failed`/`spawn_failed` after its archive was uploaded.
//! A backend's template *names* are fixed for its lifetime (their availability is not), so
//! they are asked for once per backend and remembered; availability stays the driver's
//! business (an image built later makes the template usable without a restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::SandboxBackend;
use crate::error::{Error, Result};

/// Template names per backend name, filled on first use.
#[derive(Debug, Default)]
pub(crate) struct TemplateNames {
    known: Mutex<HashMap<String, Arc<[String]>>>,
}

impl TemplateNames {
    /// `Ok` when `backend` offers `template`; `Error::InvalidSpec` (field `template`)
    /// naming the templates it does offer otherwise. When the backend cannot list its
    /// templates right now, the check is skipped (the driver reports the failure) and
    /// nothing is remembered.
    pub(crate) async fn check(
        &self,
        name: &str,
        backend: &Arc<dyn SandboxBackend>,
        template: &str,
    ) -> Result<()> {
        let cached = super::lock(&self.known).get(name).cloned();
        let names = match cached {
            Some(names) => names,
            None => match backend.templates().await {
                Ok(list) => {
                    let names: Arc<[String]> = list.into_iter().map(|t| t.name).collect();
                    super::lock(&self.known).insert(name.to_owned(), names.clone());
                    names
                }
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e.chain(), "listing templates failed");
                    return Ok(());
                }
            },
        };
        if names.iter().any(|t| t == template) {
            return Ok(());
        }
        Err(Error::invalid(
            "template",
            format!(
                "unknown template {template:?}: backend {name} offers {}",
                names
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}
