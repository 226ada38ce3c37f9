//! The one-pass archive path with a real backend (`docs/archive.md`, "One pass"): an upload
//! is hashed by the store and, in the same pass, inflated, checked and extracted into a tree
//! prepared on the backend's work root; `start` moves that tree into the sandbox. These
//! tests check what must still hold: a hostile archive is refused at upload, a tree is
//! never left behind by a refused, mismatched, abandoned or canceled upload, a partial tree
//! is never in place, and a tree a crash left is swept.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_backend_process::{Containment, ProcessBackend, ProcessConfig};
use crownest_core::hostdir::{MARKER_FILE, Marker, PreparedTree, WorkRoot};
use crownest_core::ownership::RunOwner;
use crownest_core::testing::{descriptor_of, tar_gz, tar_gz_raw_entries};
use crownest_core::{
    ArchiveDescriptor, EngineConfig, Error, MemoryStore, RejectReason, RunId, RunSpec, RunStatus,
    SandboxBackend as _, Sha256Digest, WorkspaceRuns,
};
use futures::StreamExt as _;

struct Harness {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    backend: Arc<ProcessBackend>,
    engine: WorkspaceRuns,
}

async fn harness() -> Harness {
    harness_with(EngineConfig::default()).await
}

async fn harness_with(config: EngineConfig) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let backend = Arc::new(
        ProcessBackend::new(ProcessConfig::with_root(&root).containment(Containment::Auto))
            .unwrap(),
    );
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(backend.clone())
        .config(config)
        .without_recovery()
        .open()
        .await
        .unwrap();
    Harness {
        _tmp: tmp,
        root,
        backend,
        engine,
    }
}

fn archive() -> Bytes {
    tar_gz(&[
        ("hello.txt", b"hello\n", 0o644),
        ("sub/inner.txt", b"inner\n", 0o644),
    ])
}

/// The directories in the work root (tombstones and half-built ones included).
fn root_entries(root: &Path) -> Vec<String> {
    // Directories only: the backend keeps its containment probe's cache file there.
    let mut names: Vec<String> = match std::fs::read_dir(root) {
        Ok(d) => d
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The directories in the root whose marker names `run`.
fn dirs_of(root: &Path, run: &RunId) -> Vec<PathBuf> {
    root_entries(root)
        .into_iter()
        .map(|n| root.join(n))
        .filter(|p| {
            std::fs::read(p.join(MARKER_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
                .is_some_and(|m| m.run_id == run.as_str())
        })
        .collect()
}

/// Waits (bounded) until the root holds nothing; returns what it holds then.
async fn settle_empty(root: &Path) -> Vec<String> {
    for _ in 0..200 {
        if root_entries(root).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    root_entries(root)
}

fn sh(script: &str) -> RunSpec {
    RunSpec::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_prepares_the_tree_and_start_moves_it_in() {
    let h = harness().await;
    let run = h
        .engine
        .create(sh("cat hello.txt sub/inner.txt"))
        .await
        .unwrap();
    let a = archive();
    let ready = h
        .engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    assert_eq!(ready.status, RunStatus::ArchiveReady);
    assert_eq!(ready.archive.as_ref().unwrap().extracted_bytes, 12);
    // The tree is on the work root already, outside any sandbox.
    let dirs = dirs_of(&h.root, &run.id);
    assert_eq!(dirs.len(), 1, "{:?}", root_entries(&h.root));
    assert_eq!(
        std::fs::read(dirs[0].join("workspace/sub/inner.txt")).unwrap(),
        b"inner\n"
    );
    assert_eq!(h.engine.prepared_trees(), 1);

    h.engine.start(&run.id).await.unwrap();
    let done = h.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let out = common::stdout(&common::events(&h.engine, &run.id).await);
    assert_eq!(out, "hello\ninner\n");
    assert_eq!(h.engine.prepared_trees(), 0);
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_archive_is_refused_at_upload_and_leaves_nothing() {
    let h = harness().await;
    let run = h.engine.create(sh("true")).await.unwrap();
    let hostile = tar_gz_raw_entries(&[
        ("good-1.txt", b"one"),
        ("dir/good-2.txt", b"two"),
        ("../escape.txt", b"owned"),
    ]);
    let d = descriptor_of(&hostile);
    let err = h
        .engine
        .upload_archive(&run.id, &d, hostile)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::ParentTraversal,
                ..
            }
        ),
        "{err:?}"
    );
    let record = h.engine.get(&run.id).await.unwrap();
    assert_eq!(record.status, RunStatus::AwaitingArchive);
    assert_eq!(
        root_entries(&h.root),
        Vec::<String>::new(),
        "nothing is left"
    );
    assert!(!h.root.parent().unwrap().join("escape.txt").exists());
    assert_eq!(h.engine.has_archive(&d.sha256).await.unwrap(), None);
    assert_eq!(h.engine.prepared_trees(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_discards_the_prepared_tree_and_a_retry_works() {
    let h = harness().await;
    let run = h.engine.create(sh("cat hello.txt")).await.unwrap();
    let a = archive();
    let wrong = ArchiveDescriptor {
        size_bytes: a.len() as u64,
        sha256: Sha256Digest::of(b"something else"),
    };
    let err = h
        .engine
        .upload_archive(&run.id, &wrong, a.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArchiveRejected {
                reason: RejectReason::DigestMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        h.engine.get(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
    assert_eq!(h.engine.prepared_trees(), 0);

    h.engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    h.engine.start(&run.id).await.unwrap();
    let done = h.engine.wait(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_canceled_before_start_leaves_no_prepared_tree() {
    let h = harness().await;
    let run = h.engine.create(sh("true")).await.unwrap();
    let a = archive();
    h.engine
        .upload_archive(&run.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    assert_eq!(dirs_of(&h.root, &run.id).len(), 1);
    let canceled = h.engine.cancel(&run.id).await.unwrap();
    assert_eq!(canceled.status, RunStatus::Canceled);
    assert_eq!(h.engine.prepared_trees(), 0);
    assert_eq!(root_entries(&h.root), Vec::<String>::new());
}

/// Half an upload: the tree is still in the extractor's private staging directory, never
/// in place; the upload then fails and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_tree_is_never_in_place_and_a_failed_stream_leaves_nothing() {
    let h = harness().await;
    let run = h.engine.create(sh("true")).await.unwrap();
    // Big enough that three quarters of it pass the extractor's write batches (1 MiB):
    // 4 MiB of incompressible file content.
    let files: Vec<(String, Vec<u8>)> = (0..256)
        .map(|i| (format!("f{i:02}.bin"), random_bytes(16 * 1024, i)))
        .collect();
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice(), 0o644))
        .collect();
    let a = tar_gz(&entries);
    let d = descriptor_of(&a);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
    let engine = h.engine.clone();
    let id = run.id.clone();
    let upload = tokio::spawn(async move { engine.upload_archive_stream(&id, &d, stream).await });
    tx.send(Ok(a.slice(..a.len() * 3 / 4))).await.unwrap();
    // Wait until the extractor wrote files of the first half.
    let mut staged = false;
    for _ in 0..400 {
        let dirs = dirs_of(&h.root, &run.id);
        if let Some(dir) = dirs.first() {
            assert!(
                !dir.join("workspace").exists(),
                "no tree is in place before the whole archive passed"
            );
            staged = root_files(dir) > 0;
            if staged {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        staged,
        "the first half was being extracted while it arrived"
    );
    tx.send(Err(std::io::Error::other("the client went away")))
        .await
        .unwrap();
    drop(tx);
    let err = upload.await.unwrap().unwrap_err();
    assert!(
        !matches!(err, Error::ArchiveRejected { .. }),
        "the stream's failure is the error, not the truncated archive it left: {err:?}"
    );
    assert_eq!(
        h.engine.get(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
    assert_eq!(h.engine.prepared_trees(), 0);
}

/// An upload whose caller goes away (its future dropped mid-stream) leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_leaves_no_tree() {
    let h = harness().await;
    let run = h.engine.create(sh("true")).await.unwrap();
    let a = archive();
    let d = descriptor_of(&a);
    let first = a.slice(..a.len() / 2);
    // Half the bytes, then a stream that never ends.
    let stream = futures::stream::once(async move { Ok(first) })
        .chain(futures::stream::pending())
        .boxed();
    let upload = h.engine.upload_archive_stream(&run.id, &d, stream);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), upload)
            .await
            .is_err(),
        "the upload waits for the rest"
    );
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
    assert_eq!(h.engine.prepared_trees(), 0);
    assert_eq!(
        h.engine.get(&run.id).await.unwrap().status,
        RunStatus::AwaitingArchive
    );
}

/// Attach-by-digest prepares the second run's tree from the stored archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_by_digest_prepares_a_tree_too() {
    let h = harness().await;
    let a = archive();
    let d = descriptor_of(&a);
    let first = h.engine.create(sh("true")).await.unwrap();
    h.engine.upload_archive(&first.id, &d, a).await.unwrap();
    let second = h.engine.create(sh("cat hello.txt")).await.unwrap();
    h.engine.attach_archive(&second.id, &d).await.unwrap();
    assert_eq!(dirs_of(&h.root, &second.id).len(), 1);
    assert_eq!(h.engine.prepared_trees(), 2);
    h.engine.start(&second.id).await.unwrap();
    let done = h.engine.wait(&second.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    h.engine.cancel(&first.id).await.unwrap();
    assert_eq!(h.engine.prepared_trees(), 0);
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
}

/// Uploads that are never started cannot make the host hold more than
/// `max_prepared_trees` extracted trees: past it an upload is checked without keeping one,
/// and its run extracts the stored archive at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_trees_are_bounded_and_a_run_past_the_bound_extracts_at_start() {
    let h = harness_with(EngineConfig {
        max_prepared_trees: 1,
        ..EngineConfig::default()
    })
    .await;
    let a = archive();
    let d = descriptor_of(&a);
    let first = h.engine.create(sh("cat hello.txt")).await.unwrap();
    h.engine
        .upload_archive(&first.id, &d, a.clone())
        .await
        .unwrap();
    let second = h.engine.create(sh("cat sub/inner.txt")).await.unwrap();
    h.engine.upload_archive(&second.id, &d, a).await.unwrap();
    assert_eq!(h.engine.prepared_trees(), 1);
    assert_eq!(dirs_of(&h.root, &first.id).len(), 1);
    assert_eq!(
        dirs_of(&h.root, &second.id).len(),
        0,
        "past the bound: no tree kept"
    );
    for (id, out) in [(&second.id, "inner\n"), (&first.id, "hello\n")] {
        h.engine.start(id).await.unwrap();
        let done = h.engine.wait(id).await.unwrap();
        assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
        assert_eq!(common::stdout(&common::events(&h.engine, id).await), out);
    }
    assert_eq!(h.engine.prepared_trees(), 0);
    // The place is free again.
    let third = h.engine.create(sh("true")).await.unwrap();
    let a = archive();
    h.engine
        .upload_archive(&third.id, &descriptor_of(&a), a)
        .await
        .unwrap();
    assert_eq!(h.engine.prepared_trees(), 1);
}

/// A prepared tree whose owner process is gone (a crash between upload and start) is
/// removed by the backend's sweep, like any orphaned sandbox directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_tree_a_crash_left_is_swept() {
    let h = harness().await;
    let root = WorkRoot::open(&h.root).unwrap();
    let gone = RunOwner {
        instance: "crashed".into(),
        // Above any pid_max: no such process.
        pid: 0x7fff_fff0,
        pid_start: Some(1),
    };
    let run = RunId::new();
    let marker = Marker::new(h.backend.name(), &run, "crashed", gone);
    let tree = PreparedTree::extract(
        &root,
        &marker,
        &archive()[..],
        None,
        &crownest_core::archive::ExtractPolicy::default(),
        &mut |_| {},
    )
    .unwrap();
    // The crash: nobody discards it.
    std::mem::forget(tree);
    assert_eq!(dirs_of(&h.root, &run).len(), 1);
    h.backend.sweep_orphans(&[]).await.unwrap();
    assert_eq!(settle_empty(&h.root).await, Vec::<String>::new());
}

/// Regular files anywhere under `dir` (the extractor's staging included).
fn root_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.file_name() != MARKER_FILE {
                n += 1;
            }
        }
    }
    n
}

fn random_bytes(len: usize, seed: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ seed as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
