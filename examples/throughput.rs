//! Library throughput: tiny Workspace Runs per second through the engine, on the durable
//! SQLite store and one backend (what `scripts/bench-concurrency.sh` reports).
//!
//! Each run: a 50-file / 100 KB archive (uploaded once per run, stored once by digest),
//! verified, extracted into a fresh sandbox, one trivial command executed (`true` for the
//! process and Docker backends, `node -e 0` — QuickJS — for the WASI backend), evidence
//! written. All RUNS are submitted at once (CONCURRENCY of them in flight; default: all), and
//! the engine executes `--slots` (default 8) at a time; the time is from the first `create`
//! to the last terminal record.
//!
//! ```text
//! cargo run --release --example throughput -- [RUNS] [CONCURRENCY] [--backend process|wasm|docker] [--slots N]
//! ```
//!
//! The last line of the output is machine-readable: `runs_per_s=<float> succeeded=<n>`.
use std::sync::Arc;
use std::time::Instant;

use crownest::process::{ProcessBackend, ProcessConfig};
use crownest::sqlite::SqliteStore;
use crownest::{
    ArchiveDescriptor, EngineConfig, RunSpec, RunStatus, SandboxBackend, Sha256Digest,
    WorkspaceRuns,
};

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

/// The command line.
struct Args {
    total: usize,
    concurrency: usize,
    backend: String,
    slots: usize,
}

fn args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let mut backend = "process".to_owned();
    let mut slots = 8;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => backend = it.next().ok_or("--backend needs a name")?,
            "--slots" => slots = it.next().ok_or("--slots needs a number")?.parse()?,
            _ => positional.push(a.parse::<usize>()?),
        }
    }
    let total = positional.first().copied().unwrap_or(200);
    Ok(Args {
        total,
        concurrency: positional.get(1).copied().unwrap_or(total).max(1),
        backend,
        slots,
    })
}

/// The backend named on the command line, and the trivial command a tiny run executes on it.
async fn backend(
    name: &str,
) -> Result<(Arc<dyn SandboxBackend>, Vec<&'static str>), Box<dyn std::error::Error>> {
    match name {
        "process" => Ok((
            Arc::new(ProcessBackend::new(ProcessConfig::default())?),
            vec!["true"],
        )),
        #[cfg(feature = "wasm")]
        "wasm" => {
            let wasm = crownest::wasm::WasmBackend::new(crownest::wasm::WasmConfig::default())?;
            wasm.preload().await?;
            Ok((Arc::new(wasm), vec!["node", "-e", "0"]))
        }
        #[cfg(feature = "docker")]
        "docker" => {
            let docker =
                crownest::docker::DockerBackend::connect(crownest::docker::DockerConfig::default())
                    .await?;
            Ok((Arc::new(docker), vec!["true"]))
        }
        other => Err(format!("no backend {other:?} in this build (process, wasm, docker)").into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        total,
        concurrency,
        backend: name,
        slots,
    } = args()?;
    let home = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(home.path().join("store")).await?);
    let (backend, command) = backend(&name).await?;
    let config = EngineConfig {
        max_concurrent_runs: slots,
        default_backend: Some(name.clone()),
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

    let one = |runs: WorkspaceRuns, archive: bytes::Bytes, descriptor: ArchiveDescriptor| {
        let spec = RunSpec::new(command.clone());
        async move {
            let run = runs.create(spec).await?;
            runs.upload_archive(&run.id, &descriptor, archive).await?;
            runs.start(&run.id).await?;
            let done = runs.wait(&run.id).await?;
            Ok::<_, crownest::Error>(done)
        }
    };
    // Warm-up (first sandbox root, SQLite pages, interpreter resolution, a first container).
    let warm = one(runs.clone(), archive.clone(), descriptor.clone()).await?;
    if warm.status != RunStatus::Succeeded {
        return Err(format!("the warm-up run ended {}: {:?}", warm.status, warm.failure).into());
    }

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
            && r??.status == RunStatus::Succeeded
        {
            succeeded += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} tiny runs on {name} ({} B archive, {concurrency} in flight, {slots} slots) in {secs:.2} s: {:.1} runs/s, {succeeded} succeeded",
        archive.len(),
        total as f64 / secs
    );
    println!(
        "runs_per_s={:.2} succeeded={succeeded}",
        total as f64 / secs
    );
    Ok(())
}
