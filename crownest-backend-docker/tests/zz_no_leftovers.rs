//! Runs after the other test binaries of this crate (cargo runs test targets one after the
//! other, sorted by name: hence `zz_`): no sandbox of a finished process may be left behind — no container and
//! no volume labelled `crownest.sandbox` and no marked directory of the work root (host
//! staging, a bound workspace) whose owner process is gone, unless it is kept and its
//! keep deadline has not passed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use crownest_backend_docker::{LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_SANDBOX};
use crownest_core::run::RunOwner;

fn owner_gone(labels: &HashMap<String, String>) -> bool {
    let Some(pid) = labels.get(LABEL_OWNER_PID).and_then(|p| p.parse().ok()) else {
        return true;
    };
    let owner = RunOwner {
        instance: String::new(),
        pid,
        pid_start: labels.get(LABEL_OWNER_START).and_then(|s| s.parse().ok()),
    };
    !owner.is_alive()
}

fn kept_and_pending(names: &[String]) -> bool {
    let now = crownest_core::Timestamp::now().as_millis();
    names.iter().any(|n| {
        n.rsplit_once(".kept-until-")
            .and_then(|(_, ms)| ms.parse::<i64>().ok())
            .is_some_and(|until| until > now)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sandbox_of_a_finished_process_is_left_behind() {
    let Some(b) = common::backend().await else {
        return;
    };
    let mut filters = HashMap::new();
    filters.insert("label", vec![LABEL_SANDBOX]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let leaked: Vec<_> = b
        .docker()
        .list_containers(Some(opts))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            owner_gone(c.labels.as_ref().unwrap())
                && !kept_and_pending(c.names.as_deref().unwrap_or_default())
        })
        .map(|c| (c.names, c.labels))
        .collect();
    assert!(leaked.is_empty(), "containers left behind: {leaked:#?}");
    let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = b
        .docker()
        .list_volumes(Some(opts))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    let leaked: Vec<_> = volumes
        .into_iter()
        .filter(|v| owner_gone(&v.labels))
        .map(|v| v.name)
        .collect();
    // Volumes of kept sandboxes belong to a kept container, reported above; any other
    // volume of a dead owner is a leak.
    let kept_sandboxes: Vec<String> = {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        b.docker()
            .list_containers(Some(opts))
            .await
            .unwrap()
            .into_iter()
            .filter(|c| kept_and_pending(c.names.as_deref().unwrap_or_default()))
            .filter_map(|c| c.labels.and_then(|l| l.get(LABEL_SANDBOX).cloned()))
            .collect()
    };
    let leaked: Vec<_> = leaked
        .into_iter()
        .filter(|v| !kept_sandboxes.contains(v))
        .collect();
    assert!(leaked.is_empty(), "volumes left behind: {leaked:?}");
    // Nor a bound workspace directory (`place.rs`) in the default work root whose owner
    // is gone, unless it is kept and its deadline has not passed.
    let now = crownest_core::Timestamp::now();
    let leaked: Vec<_> = common::marked_dirs(&b)
        .into_iter()
        .filter(|(_, m)| !m.owner.is_alive() && m.keep_until.is_none_or(|t| t <= now))
        .map(|(path, _)| path)
        .collect();
    assert!(leaked.is_empty(), "directories left behind: {leaked:?}");
}
