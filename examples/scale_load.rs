//! The client side of `scripts/bench-scale.sh`: submits RUNS tiny runs to one or more
//! `crownest serve` hosts (round-robin, as a load balancer would), CONCURRENCY requests in
//! flight, each a whole `create` → direct upload → `start` through the HTTP API, then
//! waits until every run is terminal. Prints one JSON line: runs, seconds from the first
//! `create` to the last terminal record, runs/s, and how many runs each engine instance
//! executed.
//!
//! ```text
//! cargo run --release --example scale_load -- URL[,URL...] TOKEN ARCHIVE RUNS CONCURRENCY
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crownest_core::{ArchiveDescriptor, RunId, RunSpec, Sha256Digest};
use crownest_http::Client;
use futures::StreamExt as _;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [urls, token, archive, runs, concurrency] = &args[..] else {
        eprintln!("usage: scale_load URL[,URL...] TOKEN ARCHIVE RUNS CONCURRENCY");
        std::process::exit(2);
    };
    let token = (!token.is_empty()).then(|| token.clone());
    let clients: Arc<Vec<Client>> = Arc::new(
        urls.split(',')
            .map(|u| Client::new(u, token.clone()).unwrap())
            .collect(),
    );
    let bytes = Bytes::from(std::fs::read(archive).unwrap());
    let desc = ArchiveDescriptor {
        size_bytes: bytes.len() as u64,
        sha256: Sha256Digest::of(&bytes),
    };
    let runs: usize = runs.parse().unwrap();
    let concurrency: usize = concurrency.parse().unwrap();
    let started = Instant::now();
    let ids: Vec<RunId> = futures::stream::iter(0..runs)
        .map(|i| {
            let clients = clients.clone();
            let (bytes, desc) = (bytes.clone(), desc.clone());
            async move {
                let c = &clients[i % clients.len()];
                let run = c.create_run(&RunSpec::new(["true"])).await.unwrap();
                c.upload_archive(&run.id, &desc, bytes).await.unwrap();
                c.start(&run.id).await.unwrap();
                run.id
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    // Every run to its end (read through the first host: the store is shared).
    let mut per_engine: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        loop {
            let r = clients[0].get_run(id).await.unwrap();
            if r.status.is_terminal() {
                assert_eq!(r.status.as_str(), "succeeded", "{id}: {:?}", r.failure);
                let owner = r.owner.map(|o| o.instance).unwrap_or_default();
                *per_engine.entry(owner).or_default() += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "runs": runs,
            "seconds": secs,
            "runsPerSecond": runs as f64 / secs,
            "perEngine": per_engine.values().collect::<Vec<_>>(),
        })
    );
}
