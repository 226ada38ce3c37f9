//! The one sweep of a work root: what a host-directory backend's `sweep_orphans` does.

use std::time::Duration;

use super::remove::{TOMBSTONE_PREFIX, remove_tree, remove_via_tombstone};
use super::root::WorkRoot;
use super::sandbox::{CREATING_PREFIX, Marker, owner_in_name, read_marker_at};
use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::ownership;
use crate::time::Timestamp;

/// Extraction staging directories (`.crownest-staging-*`) older than this are leftovers.
const STAGING_GRACE: Duration = Duration::from_secs(600);

/// Sweeps `root` for `backend`:
///
/// * a sandbox whose marker names `backend` and [`Marker::is_orphan`] → `before_remove` is
///   called with its marker (e.g. to kill what it left running), then it is removed
///   through a tombstone; its name is returned;
/// * `.removing-*` tombstones (a removal cut short, or still running in the background of
///   a dead process) → deleted;
/// * `.creating-<pid>-<start>-*` whose builder process is gone → deleted;
/// * `.crownest-staging-*` older than ten minutes → deleted;
/// * anything else (another backend's sandbox, a directory without a readable marker, other
///   dot names, non-directories) is never touched.
pub fn sweep(
    root: &WorkRoot,
    backend: &str,
    live: &[RunId],
    before_remove: &mut dyn FnMut(&Marker),
) -> Result<Vec<String>> {
    let now = Timestamp::now();
    let base = root.proc_path();
    let entries = std::fs::read_dir(&base)
        .map_err(|e| Error::io(format!("listing {}", root.path().display()), e))?;
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = base.join(&name);
        if name.starts_with(TOMBSTONE_PREFIX) {
            let _ = remove_tree(&path);
            continue;
        }
        if name.starts_with(CREATING_PREFIX) {
            let orphan = owner_in_name(&name, CREATING_PREFIX)
                .is_some_and(|o| ownership::is_orphan(o.liveness(), None, None, live, now));
            if orphan {
                let _ = remove_tree(&path);
            }
            continue;
        }
        if name.starts_with(".crownest-staging-") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > STAGING_GRACE);
            if stale {
                let _ = remove_tree(&path);
            }
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        let marker = match rustix::fs::openat(
            root.fd(),
            name.as_str(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => read_marker_at(std::os::fd::AsFd::as_fd(&fd)),
            Err(e) => Err(e.into()),
        };
        let Ok(marker) = marker else {
            continue;
        };
        if marker.backend != backend || !marker.is_orphan(live, now) {
            continue;
        }
        before_remove(&marker);
        match remove_via_tombstone(&path) {
            Ok(()) => swept.push(name),
            Err(e) => {
                tracing::warn!(sandbox = %root.path().join(&name).display(), error = %e, "removing an orphaned sandbox failed")
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hostdir::SandboxDir;
    use crate::run::RunOwner;

    fn dead_owner() -> RunOwner {
        RunOwner {
            instance: "gone".into(),
            pid: u32::MAX - 7,
            pid_start: Some(1),
        }
    }

    #[test]
    fn sweeps_orphans_leftovers_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = WorkRoot::open(tmp.path().join("root")).unwrap();
        let run = RunId::new();
        let live_run = RunId::new();
        let orphan =
            SandboxDir::create(&root, &Marker::new("wasm", &run, "e", dead_owner()), |d| {
                d.mkdir("workspace", 0o755)
            })
            .unwrap();
        let mine = SandboxDir::create(
            &root,
            &Marker::new("wasm", &live_run, "e", RunOwner::current("e")),
            |_| Ok(()),
        )
        .unwrap();
        let other_backend = SandboxDir::create(
            &root,
            &Marker::new("process", &run, "e", dead_owner()),
            |_| Ok(()),
        )
        .unwrap();
        let p = tmp.path().join("root");
        std::fs::create_dir(p.join(".removing-x")).unwrap();
        std::fs::create_dir(p.join(format!(".creating-{}-1-x", u32::MAX - 7))).unwrap();
        let alive = RunOwner::current("");
        let alive_creating = format!(".creating-{}-{}-y", alive.pid, alive.pid_start.unwrap_or(0));
        std::fs::create_dir(p.join(&alive_creating)).unwrap();
        std::fs::create_dir(p.join("unmarked")).unwrap();

        let mut seen = Vec::new();
        let swept = sweep(&root, "wasm", &[], &mut |m| seen.push(m.run_id.clone())).unwrap();
        assert_eq!(swept, vec![orphan.name().to_owned()]);
        assert_eq!(seen, vec![run.to_string()]);
        let mut left: Vec<String> = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            mine.name().to_owned(),
            other_backend.name().to_owned(),
            alive_creating,
            "unmarked".to_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
