//! Embedding CrowNest: a durable SQLite store, the process backend, and one run of
//! `examples/sample-repo` packed in memory; stream its events, then read its evidence.
//!
//! `cargo run --example embed`
use std::sync::Arc;

use crownest::process::{ProcessBackend, ProcessConfig};
use crownest::sqlite::SqliteStore;
use crownest::{ArchiveDescriptor, EventKind, RunSpec, Sha256Digest, WorkspaceRuns};
use futures::StreamExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(home.path().join("store")).await?);
    let backend = Arc::new(ProcessBackend::new(ProcessConfig::default())?);
    let runs = WorkspaceRuns::builder(store)
        .backend(backend)
        .open()
        .await?;

    // The repo as a .tar.gz in memory (any tar.gz will do; the engine verifies it).
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sample-repo");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        Default::default(),
    ));
    for file in ["README.md", "main.py", "main.js", "data/numbers.txt"] {
        tar.append_path_with_name(format!("{repo}/{file}"), file)?;
    }
    let archive = bytes::Bytes::from(tar.into_inner()?.finish()?);
    let descriptor = ArchiveDescriptor {
        size_bytes: archive.len() as u64,
        sha256: Sha256Digest::of(&archive),
    };

    let run = runs
        .create(RunSpec::new(["python3", "main.py"]).with_artifact("out/result.json", true))
        .await?;
    runs.upload_archive(&run.id, &descriptor, archive).await?;
    runs.start(&run.id).await?;
    let mut events = runs.subscribe(&run.id, 0);
    while let Some(event) = events.next().await {
        match event?.kind {
            EventKind::Stdout(chunk) => print!("{}", String::from_utf8_lossy(&chunk.bytes())),
            EventKind::Terminal {
                status, exit_code, ..
            } => println!("-> {status} (exit {exit_code:?})"),
            _ => {}
        }
    }
    let evidence = runs.evidence(&run.id).await?;
    println!(
        "evidence: {} events, chain head {}",
        evidence.events.count, evidence.events.chain_head
    );
    for a in &evidence.artifacts {
        println!(
            "artifact {} ({} bytes, sha256 {})",
            a.path, a.size_bytes, a.sha256
        );
    }
    Ok(())
}
