//! `sweep_orphans`: find sandboxes by label, decide from owner and keep deadline.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::ListVolumesOptionsBuilder;
use crownest_core::ownership::{self, Liveness};
use crownest_core::{RunId, Timestamp};

use crate::cleanup::{containers_with_label, remove_host_leftovers, remove_sandbox};
use crate::container::{LABEL_RUN, LABEL_SANDBOX, kept_until_of, owner_of};
use crate::error::DockerError;

#[derive(Debug, Default)]
struct Found {
    labels: HashMap<String, String>,
    containers: Vec<String>,
    kept_until: Option<i64>,
}

/// Whether a sandbox must go: the one orphan rule ([`ownership::is_orphan`]) with the owner
/// in its labels (incomplete labels: gone), its run label and the keep deadline in its
/// container name.
fn must_go(found: &Found, live: &[RunId], now_ms: i64) -> bool {
    let owner = owner_of(&found.labels).map_or(Liveness::Gone, |o| o.liveness());
    ownership::is_orphan(
        owner,
        found.labels.get(LABEL_RUN).map(String::as_str),
        found.kept_until.map(Timestamp::from_millis),
        live,
        Timestamp::from_millis(now_ms),
    )
}

/// Destroys orphaned sandboxes; returns their ids.
pub(crate) async fn sweep(
    docker: &Docker,
    work_dir: &Path,
    live: &[RunId],
) -> Result<Vec<String>, DockerError> {
    let mut sandboxes: BTreeMap<String, Found> = BTreeMap::new();
    for c in containers_with_label(docker, LABEL_SANDBOX).await? {
        let labels = c.labels.unwrap_or_default();
        let Some(sandbox) = labels.get(LABEL_SANDBOX).cloned() else {
            continue;
        };
        let entry = sandboxes.entry(sandbox).or_default();
        if let Some(id) = c.id {
            entry.containers.push(id);
        }
        for name in c.names.unwrap_or_default() {
            if let Some(until) = kept_until_of(&name) {
                entry.kept_until = Some(entry.kept_until.map_or(until, |u| u.max(until)));
            }
        }
        entry.labels = labels;
    }
    // Volumes left without containers (a removal interrupted half-way; a named volume of an
    // older version).
    let mut filters = HashMap::new();
    filters.insert("label", vec![LABEL_SANDBOX]);
    let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = docker
        .list_volumes(Some(opts))
        .await
        .map_err(DockerError::api("list volumes"))?;
    for v in volumes.volumes.unwrap_or_default() {
        if let Some(sandbox) = v.labels.get(LABEL_SANDBOX).cloned() {
            let entry = sandboxes.entry(sandbox).or_default();
            if entry.labels.is_empty() {
                entry.labels = v.labels;
            }
        }
    }
    let now = Timestamp::now().as_millis();
    let mut swept = Vec::new();
    for (sandbox, found) in &sandboxes {
        if !must_go(found, live, now) {
            continue;
        }
        remove_sandbox(docker, sandbox, &found.containers).await?;
        remove_host_leftovers(work_dir, sandbox);
        swept.push(sandbox.clone());
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{LABEL_OWNER_PID, LABEL_OWNER_START};

    fn found(pid: u32, run: &str, kept: Option<i64>) -> Found {
        let mut labels = HashMap::new();
        labels.insert(LABEL_OWNER_PID.to_owned(), pid.to_string());
        if pid == std::process::id()
            && let Some(start) = crownest_core::ownership::process_start_ticks(pid)
        {
            labels.insert(LABEL_OWNER_START.to_owned(), start.to_string());
        }
        labels.insert(LABEL_RUN.to_owned(), run.to_owned());
        Found {
            labels,
            containers: Vec::new(),
            kept_until: kept,
        }
    }

    #[test]
    fn decides_from_owner_live_runs_and_keep() {
        let me = std::process::id();
        let dead = 4_194_305;
        let run = RunId::new();
        let live = vec![run.clone()];
        assert!(!must_go(&found(me, "other", None), &[], 10), "owner alive");
        assert!(
            must_go(&found(dead, "other", None), &live, 10),
            "owner gone, run not live"
        );
        assert!(
            !must_go(&found(dead, run.as_str(), None), &live, 10),
            "run live"
        );
        assert!(
            !must_go(&found(dead, "other", Some(100)), &[], 10),
            "kept, not expired"
        );
        assert!(
            must_go(&found(me, "other", Some(5)), &[], 10),
            "kept and expired, even if owner alive"
        );
    }
}
