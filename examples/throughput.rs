//! Library throughput: tiny Workspace Runs per second through the engine, on the durable
//! SQLite store and the process backend (what `scripts/bench-cli.sh` reports).
//!
//! Each run: a 50-file / 100 KB archive (uploaded once per run, stored once by digest),
//! verified, extracted into a fresh sandbox, `true` executed, evidence written.
//!
//! `cargo run --release --example throughput -- [RUNS] [CONCURRENCY]` (defaults 200, 8)
use std::sync::Arc;
use std::time::Instant;

use crownest::process::{ProcessBackend, ProcessConfig};
use crownest::sqlite::SqliteStore;
use crownest::{ArchiveDescriptor, EngineConfig, RunSpec, RunStatus, Sha256Digest, WorkspaceRuns};

/// 50 files of ~2 KB of text each (~100 KB).
fn tiny_archive() -> std::io::Result<bytes::Bytes> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        Default::default(),
    ));
    for i in 0..50u32 {
        let mut data = Vec::with_capacity(2048);
        let mut x = 0x9E37_79B9u32.wrapping_mul(i + 1);
        while data.len() < 2048 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            data.extend_from_slice(format!("{x:08x} ").as_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, format!("src/file{i:02}.txt"), &data[..])?;
    }
    Ok(bytes::Bytes::from(tar.into_inner()?.finish()?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let home = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(home.path().join("store")).await?);
    let backend = Arc::new(ProcessBackend::new(ProcessConfig::default())?);
    let config = EngineConfig {
        max_concurrent_runs: concurrency,
        ..EngineConfig::default()
    };
    let runs = WorkspaceRuns::builder(store)
        .backend(backend)
        .config(config)
        .open()
        .await?;
    let archive = tiny_archive()?;
    let descriptor = ArchiveDescriptor {
        size_bytes: archive.len() as u64,
        sha256: Sha256Digest::of(&archive),
    };

    let one = |runs: WorkspaceRuns, archive: bytes::Bytes, descriptor: ArchiveDescriptor| async move {
        let run = runs.create(RunSpec::new(["true"])).await?;
        runs.upload_archive(&run.id, &descriptor, archive).await?;
        runs.start(&run.id).await?;
        let done = runs.wait(&run.id).await?;
        Ok::<_, crownest::Error>(done.status)
    };
    // Warm-up (first sandbox root, SQLite pages, interpreter resolution).
    one(runs.clone(), archive.clone(), descriptor.clone()).await?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut succeeded = 0usize;
    let mut launched = 0usize;
    while launched < total || !tasks.is_empty() {
        while launched < total && tasks.len() < concurrency {
            tasks.spawn(one(runs.clone(), archive.clone(), descriptor.clone()));
            launched += 1;
        }
        if let Some(r) = tasks.join_next().await
            && r?? == RunStatus::Succeeded
        {
            succeeded += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} tiny runs ({} B archive, concurrency {concurrency}) in {secs:.2} s: {:.1} runs/s, {succeeded} succeeded",
        archive.len(),
        total as f64 / secs
    );
    Ok(())
}
