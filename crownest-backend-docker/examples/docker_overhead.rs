//! Overhead of a tiny run through the Docker backend versus `docker run --rm`.
//!
//! ```sh
//! cargo run --release -p crownest-backend-docker --example docker_overhead [N]
//! ```
//!
//! Backend path, per iteration: `create` (one container, created and started) →
//! `materialize` (a one-file archive: extract, tar, upload) → `exec(["true"])` (attach,
//! hand the command to the launcher, wait, inspect) → `destroy` (remove it with its
//! volume, verify 404s). The whole-process comparison is `scripts/bench-docker.sh`.
//! Baselines: `docker run --rm crownest/python-node true`, plain and with the same
//! hardening flags. One warm-up of each is not counted. Prints min / median / mean and
//! the ratio of medians (goal ≤ 1.2× the plain baseline).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crownest_backend_docker::{DockerBackend, DockerConfig};
use crownest_core::archive::ExtractPolicy;
use crownest_core::run::RunOwner;
use crownest_core::{
    ExecRequest, ExecSink, ExitStatus, Limits, Network, OutputStream, RunId, SandboxBackend,
    SandboxSpec,
};

struct Discard;

#[async_trait::async_trait]
impl ExecSink for Discard {
    async fn started(&self) {}
    async fn output(&self, _: OutputStream, _: &[u8]) {}
}

fn stats(name: &str, mut d: Vec<Duration>) -> Duration {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = d.iter().map(|d| ms(*d)).sum::<f64>() / d.len() as f64;
    let median = d[d.len() / 2];
    println!(
        "{name:<34} n={:<3} min {:>7.1} ms  median {:>7.1} ms  mean {:>7.1} ms",
        d.len(),
        ms(d[0]),
        ms(median),
        mean
    );
    median
}

fn docker_run(args: &[&str]) -> Duration {
    let t = Instant::now();
    let st = std::process::Command::new("docker")
        .args(["run", "--rm"])
        .args(args)
        .args(["crownest/python-node", "true"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker CLI");
    assert!(st.success());
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let backend = DockerBackend::connect(DockerConfig::default())
        .await
        .expect("docker");
    let archive = crownest_core::testing::tar_gz(&[("hello.txt", b"hello\n", 0o644)]).to_vec();
    let request = ExecRequest::new(["true"]);

    let one = || async {
        let t = Instant::now();
        let spec = SandboxSpec {
            run_id: RunId::new(),
            instance: "bench".into(),
            owner: RunOwner::current("bench"),
            template: "python-node".into(),
            limits: Limits::default(),
            network: Network::None,
        };
        let sb = backend.create(&spec).await.unwrap();
        let t_create = t.elapsed();
        sb.materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive.clone()))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap();
        let t_mat = t.elapsed();
        let out = sb.exec(&request, &Discard).await.unwrap();
        assert_eq!(out.status, ExitStatus::Exited(0));
        let t_exec = t.elapsed();
        sb.destroy().await.unwrap();
        (
            t.elapsed(),
            [
                t_create,
                t_mat - t_create,
                t_exec - t_mat,
                t.elapsed() - t_exec,
            ],
        )
    };

    let hardened = [
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=67108864",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
        "--init",
        "--pids-limit",
        "1024",
        "--memory",
        "2g",
        "--memory-swap",
        "2g",
        "--log-driver",
        "none",
        "-v",
        "/workspace",
    ];
    // Warm-up.
    let _ = one().await;
    let _ = docker_run(&[]);
    let _ = docker_run(&hardened);

    let (mut ours, mut plain, mut hard) = (Vec::new(), Vec::new(), Vec::new());
    let mut phases = [Duration::ZERO; 4];
    // Interleave so that drift of the daemon affects every series alike.
    for _ in 0..n {
        let (total, p) = one().await;
        ours.push(total);
        for (acc, d) in phases.iter_mut().zip(p) {
            *acc += d;
        }
        plain.push(docker_run(&[]));
        hard.push(docker_run(&hardened));
    }
    let m_ours = stats("backend create→materialize→exec→destroy", ours);
    let m_plain = stats("docker run --rm (plain)", plain);
    let m_hard = stats("docker run --rm (same hardening)", hard);
    let avg = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    println!(
        "backend phases (mean): create {:.1} ms, materialize {:.1} ms, exec {:.1} ms, destroy {:.1} ms",
        avg(phases[0]),
        avg(phases[1]),
        avg(phases[2]),
        avg(phases[3])
    );
    println!(
        "ratio of medians: {:.2}x vs plain docker run, {:.2}x vs hardened docker run (goal <= 1.2x)",
        m_ours.as_secs_f64() / m_plain.as_secs_f64(),
        m_ours.as_secs_f64() / m_hard.as_secs_f64()
    );

    // Materialize throughput: a repo-shaped archive (2 000 files of 10 KiB in 40 dirs).
    let big = repo_archive(2_000, 10 * 1024);
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    crownest_core::archive::extract(
        std::io::Cursor::new(&big),
        &dir.path().join("ws"),
        &ExtractPolicy::default(),
        &mut |_| {},
    )
    .unwrap();
    let host_only = t.elapsed();
    let spec = SandboxSpec {
        run_id: RunId::new(),
        instance: "bench".into(),
        owner: RunOwner::current("bench"),
        template: "python-node".into(),
        limits: Limits::default(),
        network: Network::None,
    };
    let sb = backend.create(&spec).await.unwrap();
    let t = Instant::now();
    let summary = sb
        .materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(big.clone()))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap();
    let full = t.elapsed();
    sb.destroy().await.unwrap();
    println!(
        "materialize {} files / {:.1} MB: host extract only {:.0} ms, extract + upload into the volume {:.0} ms ({:.0} MB/s)",
        summary.files,
        summary.bytes as f64 / 1e6,
        host_only.as_secs_f64() * 1000.0,
        full.as_secs_f64() * 1000.0,
        summary.bytes as f64 / 1e6 / full.as_secs_f64()
    );
}

/// A deterministic `.tar.gz` of `files` files of `size` bytes (mildly compressible).
fn repo_archive(files: usize, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let content: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size as u64);
        b.append_data(&mut h, format!("src/d{}/f{i}.txt", i % 40), &content[..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}
