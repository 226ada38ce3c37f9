//! Start-up cost of the wasm backend: compiling CPython cold, loading it from the
//! compiled-module cache, and the per-run cost once it is in memory.
//!
//! ```sh
//! scripts/fetch-wasm-modules.sh
//! cargo run --release -p crownest-backend-wasm --example wasm_startup [-- RUNS]
//! ```
//!
//! Uses a fresh temporary compiled-module cache (so the cold compile is real) and a
//! temporary workspace root; the modules come from the fetch script's cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crownest_backend_wasm::{Interpreter, ModuleSource, WasmBackend, WasmConfig};
use crownest_core::run::RunOwner;
use crownest_core::{
    ExecRequest, ExecSink, ExitStatus, Limits, Network, OutputStream, RunId, SandboxBackend,
    SandboxSpec,
};

#[derive(Default)]
struct CountingSink(AtomicU64);

#[async_trait]
impl ExecSink for CountingSink {
    async fn started(&self) {}
    async fn output(&self, _stream: OutputStream, data: &[u8]) {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

fn spec() -> SandboxSpec {
    SandboxSpec {
        run_id: RunId::new(),
        instance: "wasm-startup".into(),
        owner: RunOwner::current("wasm-startup"),
        template: "python-node".into(),
        limits: Limits::default(),
        network: Network::None,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    format!(
        "median {:7.2} ms  mean {:7.2} ms  min {:7.2} ms  max {:7.2} ms",
        ms(v[v.len() / 2]),
        ms(mean),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

/// Timings of `runs` runs of argv.
#[derive(Default)]
struct Timings {
    full: Vec<Duration>,
    create: Vec<Duration>,
    exec: Vec<Duration>,
    destroy: Vec<Duration>,
}

async fn per_run(backend: &WasmBackend, argv: &[&str], runs: usize) -> Timings {
    let request = ExecRequest::new(argv.iter().copied());
    let mut t = Timings::default();
    for _ in 0..runs {
        let sink = CountingSink::default();
        let t0 = Instant::now();
        let sandbox = backend.create(&spec()).await.unwrap();
        let t1 = Instant::now();
        let outcome = sandbox.exec(&request, &sink).await.unwrap();
        let t2 = Instant::now();
        sandbox.destroy().await.unwrap();
        t.full.push(t0.elapsed());
        t.create.push(t1 - t0);
        t.exec.push(t2 - t1);
        t.destroy.push(t2.elapsed());
        assert_eq!(outcome.status, ExitStatus::Exited(0));
        assert!(sink.0.load(Ordering::Relaxed) > 0 || argv[0] == "node");
    }
    t
}

fn report(title: &str, t: &Timings) {
    println!("{title}");
    println!("  create+exec+destroy  {}", stats(t.full.clone()));
    println!("  create               {}", stats(t.create.clone()));
    println!("  exec                 {}", stats(t.exec.clone()));
    println!("  destroy              {}", stats(t.destroy.clone()));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let config = WasmConfig::default()
        .with_cache_dir(tmp.path().join("compiled"))
        .with_workspace_root(tmp.path().join("workspaces"));
    println!("modules: {}", config.modules_dir.display());

    // 1. Cold: nothing compiled yet.
    let cold = WasmBackend::new(config.clone()).unwrap();
    let t = Instant::now();
    let loaded = cold
        .preload()
        .await
        .expect("modules present (run scripts/fetch-wasm-modules.sh)");
    let cold_total = t.elapsed();
    for p in &loaded {
        println!(
            "cold   {:?}: {:?} in {:8.1} ms",
            p.interpreter,
            p.source,
            ms(p.elapsed)
        );
        assert_eq!(p.source, ModuleSource::Compiled);
    }
    drop(cold);

    // 2. Cached: a new backend (new engine) on the same compiled-module cache.
    let mut cached_py = Vec::new();
    for _ in 0..5 {
        let warm = WasmBackend::new(config.clone()).unwrap();
        for p in warm.preload().await.unwrap() {
            assert_eq!(p.source, ModuleSource::DiskCache);
            if p.interpreter == Interpreter::Python {
                cached_py.push(p.elapsed);
            }
        }
    }
    let cold_py = loaded
        .iter()
        .find(|p| p.interpreter == Interpreter::Python)
        .unwrap()
        .elapsed;
    let cached_median = {
        let mut v = cached_py.clone();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "cached Python (disk cache → memory, incl. digest check): {}",
        stats(cached_py)
    );
    println!(
        "cached / cold compile of python.wasm: {:.2}% (goal ≤ 10%)",
        100.0 * cached_median.as_secs_f64() / cold_py.as_secs_f64()
    );
    println!("cold preload of both modules: {:.1} ms", ms(cold_total));

    // 3. Per run, modules in memory.
    let backend = WasmBackend::new(config.clone()).unwrap();
    backend.preload().await.unwrap();
    let _ = per_run(&backend, &["python3", "-c", "print(1)"], 3).await; // warm-up
    let py = per_run(&backend, &["python3", "-c", "print(1)"], runs).await;
    let js = per_run(&backend, &["node", "-e", "0"], runs).await;
    report(&format!("python3 -c 'print(1)', {runs} runs:"), &py);
    report(
        &format!(
            "node -e 0 (QuickJS starts in ~0.3 ms: exec ≈ the backend's own per-exec cost), {runs} runs:"
        ),
        &js,
    );
}
