//! The one bridge from the blocking extractor to a backend's async `materialize`, and the
//! materialization of a sandbox directory's workspace.
//!
//! Staging is the extractor's own (`archive/staging.rs`: a private `.crownest-staging-*`
//! directory next to the destination, renamed into place only when the whole archive
//! passed), so no backend stages a second time. Progress is not throttled here: the
//! blocking side overwrites the latest value in a `watch` channel (never a queue that can
//! grow), the async side hands each value it sees to the caller's callback, and the engine
//! throttles once (`EngineConfig::progress_interval`).

use std::io::{self, Read};
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;

use super::sandbox::SandboxDir;
use crate::archive::{ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::backend::{ArchiveSource, ProgressFn};
use crate::error::{Error, Result};
use crate::event::ArchivePhase;

/// [`archive::extract_unhashed`](crate::archive::extract_unhashed) of `archive` into `dest`
/// (which must not exist; its parent must) on a blocking thread (the archive comes from the
/// store, which checked its digest when it stored it), reporting progress to `progress` on the
/// calling task: every value the caller sees is one the pass reported, the last one
/// included; values the caller was too slow to see are skipped, never queued.
pub async fn extract(
    archive: Box<dyn Read + Send>,
    dest: PathBuf,
    policy: &ExtractPolicy,
    progress: ProgressFn<'_>,
) -> Result<ExtractSummary> {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<ExtractProgress>);
    let policy = *policy;
    let task = tokio::task::spawn_blocking(move || {
        crate::archive::extract_unhashed(archive, &dest, None, &policy, &mut |p| {
            tx.send_replace(Some(p));
        })
    });
    tokio::pin!(task);
    let mut seen = None;
    let mut report = |p: Option<ExtractProgress>| {
        if p.is_some() && p != seen {
            seen = p;
            if let Some(p) = p {
                progress(p);
            }
        }
    };
    let joined = loop {
        tokio::select! {
            r = &mut task => break r,
            Ok(()) = rx.changed() => report(*rx.borrow_and_update()),
        }
    };
    // What the pass reported last, if the loop ended before it saw it.
    report(*rx.borrow());
    joined.map_err(|e| {
        Error::io(
            "extracting the archive",
            io::Error::other(format!("the extraction task failed: {e}")),
        )
    })?
}

impl SandboxDir {
    /// Puts the run's tree into the subdirectory `sub` (one component), which
    /// [`SandboxDir::create`] made as an empty placeholder: a tree prepared at upload is
    /// moved there ([`PreparedTree::move_into`](super::PreparedTree::move_into)); an archive is extracted by the extractor
    /// into its staging directory and renamed into place complete ([`extract`]). Either
    /// way a command never sees a partial tree. A placeholder that is not empty
    /// (materialized already) is refused. On failure the empty placeholder is put back, so
    /// artifact collection still finds a (empty) workspace.
    pub async fn materialize(
        &self,
        sub: &str,
        source: ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        let archive = match source {
            ArchiveSource::Prepared(tree) => {
                let result = tree.move_into(self, sub).await;
                match &result {
                    Ok(summary) => progress(ExtractProgress {
                        phase: ArchivePhase::Extracting,
                        bytes_done: summary.compressed_bytes,
                        entries: summary.entries,
                    }),
                    Err(_) => self.put_placeholder_back(sub),
                }
                return result;
            }
            ArchiveSource::Archive(archive) => archive,
        };
        let context = || format!("materializing {}", self.host_path().join(sub).display());
        match rustix::fs::unlinkat(self.fd(), sub, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                return Err(Error::io(
                    context(),
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it is not empty: the workspace was already materialized",
                    ),
                ));
            }
            Err(e) => return Err(Error::io(context(), e.into())),
        }
        let result = extract(archive, self.proc_path().join(sub), policy, progress).await;
        if result.is_err() {
            self.put_placeholder_back(sub);
        }
        result
    }

    fn put_placeholder_back(&self, sub: &str) {
        match rustix::fs::mkdirat(self.fd(), sub, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                tracing::warn!(sandbox = %self.host_path().display(), error = %e, "putting the empty workspace back after a failed extraction failed")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::hostdir::{Marker, PreparedTree, WorkRoot};
    use crate::ids::RunId;
    use crate::ownership::RunOwner;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Written raw: the tar crate itself refuses a `..` path.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn sandbox(tmp: &tempfile::TempDir) -> SandboxDir {
        let root = WorkRoot::open(tmp.path().join("root")).unwrap();
        let marker = Marker::new("test", &RunId::new(), "e", RunOwner::current("e"));
        SandboxDir::create(&root, &marker, |d| d.mkdir("workspace", 0o755)).unwrap()
    }

    fn root_entries(tmp: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// `files` as a tree prepared on `root` (a fresh run's marker, the default policy).
    fn prepare(root: &WorkRoot, files: &[(&str, &[u8])]) -> Result<PreparedTree> {
        let marker = Marker::new("test", &RunId::new(), "e", RunOwner::current("e"));
        PreparedTree::extract(
            root,
            &marker,
            &tar_gz(files)[..],
            None,
            &ExtractPolicy::default(),
            &mut |_| {},
        )
    }

    #[tokio::test]
    async fn a_prepared_tree_is_moved_in_whole_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sandbox(&tmp);
        let root = dir.root().clone();
        let files: &[(&str, &[u8])] = &[("a.txt", b"hello"), ("sub/b.txt", b"world")];
        let tree = prepare(&root, files).unwrap();
        assert_eq!(
            root_entries(&tmp).len(),
            2,
            "the sandbox and the prepared tree"
        );
        assert_eq!(
            std::fs::read(tree.host_path().join("sub/b.txt")).unwrap(),
            b"world"
        );
        let seen = Mutex::new(Vec::new());
        let progress = |p: ExtractProgress| seen.lock().unwrap().push(p);
        let summary = dir
            .materialize(
                "workspace",
                ArchiveSource::Prepared(tree),
                &ExtractPolicy::default(),
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(
            seen.into_inner().unwrap().last().map(|p| p.entries),
            Some(summary.entries)
        );
        let ws = dir.host_path().join("workspace");
        assert_eq!(std::fs::read(ws.join("a.txt")).unwrap(), b"hello");
        // What is left of the prepared directory is deleted in the background.
        root.removals_settled().await;
        assert_eq!(
            root_entries(&tmp),
            [dir.name().to_owned()],
            "the prepared directory is gone"
        );

        // A second tree is refused by a materialized workspace, and discarded.
        let other = prepare(&root, files).unwrap();
        let again = dir
            .materialize(
                "workspace",
                ArchiveSource::Prepared(other),
                &ExtractPolicy::default(),
                &|_| {},
            )
            .await;
        assert!(
            matches!(again, Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::AlreadyExists),
            "{again:?}"
        );
        root.removals_settled().await;
        assert_eq!(root_entries(&tmp), [dir.name().to_owned()]);
        assert_eq!(std::fs::read(ws.join("a.txt")).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn a_refused_archive_leaves_no_prepared_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = WorkRoot::open(tmp.path().join("root")).unwrap();
        let r = prepare(&root, &[("ok.txt", b"fine"), ("../escape.txt", b"x")]);
        assert!(matches!(r, Err(Error::ArchiveRejected { .. })), "{r:?}");
        assert!(root_entries(&tmp).is_empty(), "{:?}", root_entries(&tmp));
        assert!(!tmp.path().join("escape.txt").exists());
    }

    #[tokio::test]
    async fn materializes_once_reports_the_last_progress_and_leaves_no_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sandbox(&tmp);
        let archive = tar_gz(&[("a.txt", b"hello"), ("sub/b.txt", b"world")]);
        let seen = Mutex::new(Vec::new());
        let progress = |p: ExtractProgress| seen.lock().unwrap().push(p);
        let summary = dir
            .materialize(
                "workspace",
                ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive.clone()))),
                &ExtractPolicy::default(),
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(summary.files, 2);
        let ws = dir.host_path().join("workspace");
        assert_eq!(std::fs::read(ws.join("sub/b.txt")).unwrap(), b"world");
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.last().map(|p| p.entries),
            Some(summary.entries),
            "the caller sees the pass's last progress"
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.host_path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["crownest-sandbox.json", "workspace"]);
        // A second materialize is refused and leaves the tree alone.
        let again = dir
            .materialize(
                "workspace",
                ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive))),
                &ExtractPolicy::default(),
                &|_| {},
            )
            .await;
        assert!(
            matches!(again, Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(ws.join("a.txt")).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn a_refused_archive_leaves_an_empty_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sandbox(&tmp);
        let hostile = tar_gz(&[("../escape.txt", b"x")]);
        let r = dir
            .materialize(
                "workspace",
                ArchiveSource::Archive(Box::new(std::io::Cursor::new(hostile))),
                &ExtractPolicy::default(),
                &|_| {},
            )
            .await;
        assert!(matches!(r, Err(Error::ArchiveRejected { .. })), "{r:?}");
        let ws = dir.host_path().join("workspace");
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0);
        assert!(!tmp.path().join("root/escape.txt").exists());
        let left: Vec<_> = std::fs::read_dir(dir.host_path()).unwrap().collect();
        assert_eq!(left.len(), 2, "marker + the empty workspace, no staging");
    }

    #[tokio::test]
    async fn a_removal_not_waited_for_is_pending_until_the_root_settles() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sandbox(&tmp);
        let root = dir.root().clone();
        for i in 0..500 {
            dir.write_file(&format!("workspace/f{i}"), b"x", 0o644)
                .unwrap();
        }
        // A zero wait: unreachable at once (renamed), deleted in the background, counted.
        let removal = dir.remove(std::time::Duration::ZERO).await.unwrap();
        assert_eq!(removal, crate::hostdir::Removal::Pending);
        assert!(
            !dir.host_path().exists(),
            "unreachable under its name at once"
        );
        root.removals_settled().await;
        assert_eq!(root.removals_in_flight(), 0);
        assert!(root_entries(&tmp).is_empty(), "{:?}", root_entries(&tmp));
        // Removing it again is done; a waited-for removal leaves nothing in flight either.
        assert_eq!(
            dir.remove(std::time::Duration::ZERO).await.unwrap(),
            crate::hostdir::Removal::Done
        );
        let other = sandbox(&tmp);
        let removal = other
            .remove(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(removal, crate::hostdir::Removal::Done);
        assert_eq!(other.root().removals_in_flight(), 0);
        assert!(root_entries(&tmp).is_empty());
    }

    #[tokio::test]
    async fn a_dropped_prepared_tree_is_counted_until_it_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = WorkRoot::open(tmp.path().join("root")).unwrap();
        let tree = prepare(&root, &[("a.txt", b"hello")]).unwrap();
        assert_eq!(root_entries(&tmp).len(), 1);
        drop(tree);
        root.removals_settled().await;
        assert!(root_entries(&tmp).is_empty(), "{:?}", root_entries(&tmp));
    }
}
