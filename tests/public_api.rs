//! The facade's public API end to end (DESIGN §1: the root package owns `tests/`): a run on
//! the process backend with the SQLite store, from a tar.gz built here to a verified,
//! signed Evidence Bundle, using only what `crownest` re-exports.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use crownest::process::{ProcessBackend, ProcessConfig};
use crownest::signing::HostKey;
use crownest::sqlite::SqliteStore;
use crownest::{
    ArchiveDescriptor, EventKind, OutputStream, RunSpec, RunStatus, Sha256Digest, WorkspaceRuns,
};
use futures::StreamExt as _;

/// A gzipped tar of `files` (path, content), built in memory.
fn tar_gz(files: &[(&str, &[u8])]) -> bytes::Bytes {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, *content).unwrap();
    }
    bytes::Bytes::from(tar.into_inner().unwrap().finish().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_from_archive_to_verified_evidence() {
    let home = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(home.path().join("store")).await.unwrap());
    let backend = Arc::new(
        ProcessBackend::new(ProcessConfig::with_root(home.path().join("sandboxes"))).unwrap(),
    );
    let runs = WorkspaceRuns::builder(store)
        .backend(backend)
        .host_key(Arc::new(HostKey::generate()))
        .open()
        .await
        .unwrap();

    let archive = tar_gz(&[
        ("input.txt", b"seven\n"),
        (
            "job.sh",
            b"mkdir -p out && tr a-z A-Z < input.txt > out/result.txt && echo done\n",
        ),
    ]);
    let descriptor = ArchiveDescriptor {
        size_bytes: archive.len() as u64,
        sha256: Sha256Digest::of(&archive),
    };
    let run = runs
        .create(RunSpec::new(["sh", "job.sh"]).with_artifact("out/result.txt", true))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::AwaitingArchive);
    runs.upload_archive(&run.id, &descriptor, archive)
        .await
        .unwrap();
    runs.start(&run.id).await.unwrap();

    // Follow the run until its terminal event (the stream ends after it).
    let followed: Vec<_> = tokio::time::timeout(
        Duration::from_secs(60),
        runs.subscribe(&run.id, 0)
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the run ends within 60 s");
    let last = followed.last().expect("events");
    let EventKind::Terminal {
        status, exit_code, ..
    } = &last.kind
    else {
        panic!("the stream ends with terminal, not {:?}", last.kind);
    };
    assert_eq!(*status, RunStatus::Succeeded);
    assert_eq!(*exit_code, Some(0));
    let stdout: Vec<u8> = followed
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(chunk) => Some(chunk.bytes()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stdout, b"done\n");
    assert!(followed.iter().all(|e| !matches!(
        &e.kind,
        EventKind::OutputTruncated {
            stream: OutputStream::Stdout,
            ..
        }
    )));

    // The artifact, through the engine.
    let done = runs.get(&run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    let [collected] = done.artifacts.as_slice() else {
        panic!("one artifact: {:?}", done.artifacts);
    };
    let (artifact, mut reader) = runs.open_artifact(&collected.artifact_id).await.unwrap();
    assert_eq!(artifact.path, "out/result.txt");
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, b"SEVEN\n");
    assert_eq!(artifact.sha256, Sha256Digest::of(&bytes));
    assert_eq!(artifact.size_bytes, bytes.len() as u64);

    // The evidence verifies against the stored chain, and its envelope under the host key.
    let events = runs.list_events(&run.id, 0, 1000).await.unwrap();
    assert_eq!(events, followed, "the stream and the window agree");
    let evidence = runs.evidence(&run.id).await.unwrap();
    assert_eq!(evidence.artifacts.len(), 1);
    let bundle = serde_json::to_value(&evidence).unwrap();
    let problems = crownest::evidence::verify(&bundle, &events);
    assert!(problems.is_empty(), "{problems:?}");
    let envelope = runs
        .evidence_envelope(&run.id)
        .await
        .unwrap()
        .expect("signed in the terminal commit");
    envelope
        .verify(&runs.host_public_key().unwrap())
        .expect("the envelope verifies under the engine's host key");

    // An edited bundle does not verify, and the problem names the field.
    let mut edited = bundle.clone();
    edited["artifacts"][0]["sizeBytes"] = serde_json::json!(1);
    let problems = crownest::evidence::verify(&edited, &events);
    assert!(!problems.is_empty(), "an edited size must be reported");
}
