//! Refusing a spec whose template its backend does not offer, or cannot serve right now, at
//! `create`.
//!
//! Without this check an unknown or unusable template is found only when the driver asks
//! the backend for a sandbox, and the run ends `failed`/`spawn_failed` after its archive
//! was uploaded. The backend is asked (`templates()`) at each create, except that a
//! template seen available is trusted for [`AVAILABLE_FOR`] (a Docker image inspect or a
//! module check per create would cost every tiny run). Unavailability is never
//! remembered: an image built or a module fetched makes the next create work.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::SandboxBackend;
use crate::error::{Error, Result};

/// How long a template seen available is trusted without asking the backend again.
pub(crate) const AVAILABLE_FOR: Duration = Duration::from_secs(10);

/// When each (backend, template) was last seen available.
#[derive(Debug, Default)]
pub(crate) struct TemplateNames {
    available: Mutex<HashMap<(String, String), Instant>>,
}

impl TemplateNames {
    /// `Ok` when `backend` offers `template` and it is available; `Error::InvalidSpec`
    /// (field `template`) naming the templates it does offer, or saying why the template
    /// is unavailable, otherwise. When the backend cannot list its templates right now,
    /// the check is skipped (the driver reports the failure).
    pub(crate) async fn check(
        &self,
        name: &str,
        backend: &std::sync::Arc<dyn SandboxBackend>,
        template: &str,
    ) -> Result<()> {
        let key = (name.to_owned(), template.to_owned());
        if super::lock(&self.available)
            .get(&key)
            .is_some_and(|seen| seen.elapsed() < AVAILABLE_FOR)
        {
            return Ok(());
        }
        let list = match backend.templates().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(backend = %name, error = %e.chain(), "listing templates failed");
                return Ok(());
            }
        };
        let Some(info) = list.iter().find(|t| t.name == template) else {
            return Err(Error::invalid(
                "template",
                format!(
                    "unknown template {template:?}: backend {name} offers {}",
                    list.iter()
                        .map(|t| format!("{:?}", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if !info.available {
            return Err(Error::invalid(
                "template",
                format!(
                    "template {template:?} of backend {name} is unavailable: {}",
                    info.reason
                        .as_deref()
                        .unwrap_or("the backend gave no reason")
                ),
            ));
        }
        super::lock(&self.available).insert(key, Instant::now());
        Ok(())
    }
}
