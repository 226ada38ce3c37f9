//! What the template image's interpreters are: the path and `--version` of `python3` and
//! `node`, measured in the image itself (by id) with a throwaway hardened container, so the
//! evidence names the interpreters that ran, as the process backend's does.
//!
//! A measurement costs one container (~0.3 s), so it is made once per image id and kept in
//! memory and in the backend's private work root (`interpreters-<image id>.json`); a new
//! image (a new id) is measured again. The probe container carries the sandbox labels of
//! this process, so a crash mid-probe leaves nothing that `sweep_orphans` would not remove.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt as _;

use crate::backend::Shared;
use crate::container::{LABEL_INSTANCE, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_SANDBOX};
use crate::error::DockerError;
use crate::image::ImageInfo;

/// Prints `name<TAB>path<TAB>version` for each interpreter found on the image's PATH.
const PROBE: &str = r#"for i in python3 node; do p=$(command -v "$i") || continue; printf '%s\t%s\t%s\n' "$i" "$p" "$("$i" --version 2>&1 | head -n1)"; done"#;

/// The interpreter facts of `image` (`python3.path`, `python3.version`, `node.path`,
/// `node.version`; `<name>.missing` when the image lacks one).
pub(crate) async fn facts(
    shared: &Shared,
    image: &ImageInfo,
) -> Result<BTreeMap<String, String>, DockerError> {
    if let Some(f) = shared
        .interpreters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&image.id)
    {
        return Ok(f.clone());
    }
    let file = shared.root().ok().map(|root| {
        root.path()
            .join(format!("interpreters-{}.json", image.id.replace(':', "-")))
    });
    let cached = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, String>>(&bytes).ok());
    let facts = match cached {
        Some(f) => f,
        None => {
            let f = probe(&shared.docker, &shared.config.user, &image.id).await?;
            if let Some(path) = &file
                && let Ok(json) = serde_json::to_vec(&f)
            {
                // Best effort: a missing cache only costs another probe.
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                if std::fs::write(&tmp, json).is_ok() {
                    let _ = std::fs::rename(&tmp, path);
                }
            }
            f
        }
    };
    shared
        .interpreters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(image.id.clone(), facts.clone());
    Ok(facts)
}

/// Parses the probe's output into facts.
fn parse(output: &str) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    for line in output.lines() {
        let mut parts = line.splitn(3, '\t');
        if let (Some(name), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
        {
            facts.insert(format!("{name}.path"), path.to_owned());
            facts.insert(format!("{name}.version"), version.trim().to_owned());
        }
    }
    for name in ["python3", "node"] {
        if !facts.contains_key(&format!("{name}.path")) {
            facts.insert(format!("{name}.missing"), "not on the image's PATH".into());
        }
    }
    facts
}

async fn probe(
    docker: &Docker,
    user: &str,
    image_id: &str,
) -> Result<BTreeMap<String, String>, DockerError> {
    let owner = crownest_core::run::RunOwner::current("interpreter-probe");
    let mut labels = HashMap::new();
    let name = format!("crownest-probe-{}", uuid::Uuid::new_v4().simple());
    labels.insert(LABEL_SANDBOX.to_owned(), name.clone());
    labels.insert(LABEL_INSTANCE.to_owned(), owner.instance.clone());
    labels.insert(LABEL_OWNER_PID.to_owned(), owner.pid.to_string());
    if let Some(start) = owner.pid_start {
        labels.insert(LABEL_OWNER_START.to_owned(), start.to_string());
    }
    let body = ContainerCreateBody {
        image: Some(image_id.to_owned()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), PROBE.into()]),
        user: Some(user.to_owned()),
        network_disabled: Some(true),
        env: Some(vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            memory: Some(256 * 1024 * 1024),
            pids_limit: Some(64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = docker
        .create_container(Some(opts), body)
        .await
        .map_err(DockerError::api("create probe container"))?
        .id;
    let result = run(docker, &id).await;
    let rm = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(&id, Some(rm)).await;
    result.map(|out| parse(&out))
}

async fn run(docker: &Docker, id: &str) -> Result<String, DockerError> {
    docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(DockerError::api("start probe container"))?;
    let mut wait = docker.wait_container(id, Some(WaitContainerOptionsBuilder::new().build()));
    while let Some(r) = wait.next().await {
        // A non-zero exit is fine (an interpreter missing); the output says what was found.
        if let Err(e) = r
            && !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. })
        {
            return Err(DockerError::api("wait for probe container")(e));
        }
    }
    let mut logs = docker.logs(
        id,
        Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
    );
    let mut out = String::new();
    while let Some(chunk) = logs.next().await {
        let chunk = chunk.map_err(DockerError::api("read probe output"))?;
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_becomes_facts() {
        let f = parse("python3\t/usr/bin/python3\tPython 3.11.2\nnode\t/usr/bin/node\tv18.20.4\n");
        assert_eq!(f["python3.path"], "/usr/bin/python3");
        assert_eq!(f["python3.version"], "Python 3.11.2");
        assert_eq!(f["node.version"], "v18.20.4");
        let f = parse("python3\t/usr/bin/python3\tPython 3.11.2\n");
        assert_eq!(f["node.missing"], "not on the image's PATH");
    }
}
