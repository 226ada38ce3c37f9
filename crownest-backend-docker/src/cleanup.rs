//! Removing every Docker resource of a sandbox, and proving it is gone.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};

use crate::container::LABEL_SANDBOX;
use crate::error::{DockerError, is_not_found, status_of};

/// Every container (running or not) carrying `label` (`key` or `key=value`).
pub(crate) async fn containers_with_label(
    docker: &Docker,
    label: &str,
) -> Result<Vec<ContainerSummary>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert("label", vec![label]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .map_err(DockerError::api("list containers"))
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let opts = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress (a concurrent destroy): verified below.
        Err(e) if status_of(&e) == Some(409) => Ok(()),
        Err(e) => Err(DockerError::api("remove container")(e)),
    }
}

/// Every volume carrying `label` (`key` or `key=value`): the workspace volumes (anonymous,
/// labelled through the mount's volume options; named `<sandbox>` in older versions).
pub(crate) async fn volumes_with_label(
    docker: &Docker,
    label: &str,
) -> Result<Vec<String>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert("label", vec![label]);
    let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
    Ok(docker
        .list_volumes(Some(opts))
        .await
        .map_err(DockerError::api("list volumes"))?
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect())
}

/// Removes the containers `known` plus every container labelled with the sandbox (with
/// their anonymous volumes), then any volume still labelled with it, then checks that none
/// of them exists any more. Idempotent.
///
/// Round trips on the common path (one known container, its anonymous volume removed with
/// it): the removal and the label listing at once, then, at once, the volume listing
/// (which is also the proof that no volume is left), the container's 404 and an empty
/// container listing.
pub(crate) async fn remove_sandbox(
    docker: &Docker,
    sandbox: &str,
    known: &[String],
) -> Result<(), DockerError> {
    let label = format!("{LABEL_SANDBOX}={sandbox}");
    let (listed, removals) = tokio::join!(
        containers_with_label(docker, &label),
        futures::future::join_all(known.iter().map(|id| remove_container(docker, id))),
    );
    let mut ids: Vec<String> = known.to_vec();
    let mut extra = Vec::new();
    for c in listed? {
        if let Some(id) = c.id
            && !ids.contains(&id)
        {
            ids.push(id.clone());
            extra.push(id);
        }
    }
    for r in removals {
        r?;
    }
    // Containers a lost create reply or a crash left under the same label.
    for r in futures::future::join_all(extra.iter().map(|id| remove_container(docker, id))).await {
        r?;
    }
    // What is left, asked at once: the volumes still labelled (the anonymous one goes
    // with its container), each container's 404, the containers still labelled.
    let inspections = futures::future::join_all(ids.iter().map(|id| async move {
        match docker.inspect_container(id, None).await {
            Err(e) if is_not_found(&e) => Ok(()),
            Ok(_) => Err(DockerError::Survived {
                what: format!("container {id}"),
            }),
            Err(e) => Err(DockerError::api("inspect container")(e)),
        }
    }));
    let (left, inspected, containers_after) = tokio::join!(
        volumes_with_label(docker, &label),
        inspections,
        containers_with_label(docker, &label),
    );
    for r in inspected {
        r?;
    }
    if let Some(c) = containers_after?.into_iter().next() {
        return Err(DockerError::Survived {
            what: format!("container {}", c.id.unwrap_or_default()),
        });
    }
    // A volume left: a 409 means a container removal is still finishing; retry briefly.
    let left = left?;
    for volume in &left {
        let mut attempt = 0;
        loop {
            let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
            match docker.remove_volume(volume, Some(opts)).await {
                Ok(()) => break,
                Err(e) if is_not_found(&e) => break,
                Err(e) if status_of(&e) == Some(409) && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(DockerError::api("remove volume")(e)),
            }
        }
    }
    if !left.is_empty()
        && let Some(v) = volumes_with_label(docker, &label).await?.into_iter().next()
    {
        return Err(DockerError::Survived {
            what: format!("volume {v}"),
        });
    }
    Ok(())
}

/// Removes host staging left by a sandbox (`<work_dir>/<sandbox>*`: artifact mirrors),
/// best effort, through the one host-directory removal.
pub(crate) fn remove_host_leftovers(work_dir: &Path, sandbox: &str) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(sandbox))
        {
            let _ = crownest_core::hostdir::remove_via_tombstone(&e.path());
        }
    }
}

/// The sandboxes being removed in the background (`DockerConfig::background_removal`).
#[derive(Debug, Default)]
pub(crate) struct Removals {
    tasks: std::sync::Mutex<tokio::task::JoinSet<bool>>,
}

impl Removals {
    /// Removes the sandbox (its containers and workspace volume, verified, then its host
    /// leftovers) in a background task; a failed removal is retried twice, a second apart.
    pub(crate) fn spawn(
        &self,
        shared: std::sync::Arc<crate::backend::Shared>,
        sandbox: String,
        container: String,
    ) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap the finished ones (a server ends thousands of runs).
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let known = [container];
            let mut attempt = 0;
            loop {
                match remove_sandbox(&shared.docker, &sandbox, &known).await {
                    Ok(()) => break,
                    Err(e) if attempt < 2 => {
                        attempt += 1;
                        tracing::debug!(%sandbox, error = %e, "background removal failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::warn!(%sandbox, error = %e, "removing the sandbox in the background failed; the sweep after this process exits removes it");
                        return false;
                    }
                }
            }
            if let Ok(root) = shared.root() {
                remove_host_leftovers(&root.proc_path(), &sandbox);
            }
            true
        });
    }

    /// Waits for every removal in flight; returns how many failed.
    pub(crate) async fn wait(&self) -> usize {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failed = 0;
        while let Some(done) = tasks.join_next().await {
            if !matches!(done, Ok(true)) {
                failed += 1;
            }
        }
        failed
    }
}
