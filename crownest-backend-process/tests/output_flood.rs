//! A 1 GiB stdout flood finishes with bounded memory and an `output_truncated` event.
//! Its own test binary, so the peak RSS (`VmHWM`) measured is this run's alone.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use crownest_backend_process::Containment;
use crownest_core::{EventKind, LimitOverrides, OutputStream, RunSpec, RunStatus};

fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_of_stdout_with_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let cap = 16 * 1024 * 1024;
    let spec =
        RunSpec::new(["head", "-c", "1073741824", "/dev/zero"]).with_limits(LimitOverrides {
            output_bytes_per_stream: Some(cap),
            ..LimitOverrides::default()
        });
    let before = vm_hwm_bytes();
    let started = Instant::now();
    let (_, done, events) = tokio::time::timeout(
        Duration::from_secs(120),
        run(backend(Containment::Auto), spec),
    )
    .await
    .expect("the flood ends within 120 s");
    let elapsed = started.elapsed();
    let peak = vm_hwm_bytes();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let stored: u64 = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Stdout(c) => Some(c.len()),
            _ => None,
        })
        .sum();
    assert_eq!(stored, cap);
    let truncated: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::OutputTruncated {
                stream: OutputStream::Stdout,
                bytes_dropped,
            } => Some(*bytes_dropped),
            _ => None,
        })
        .collect();
    assert_eq!(
        truncated,
        vec![GIB - cap],
        "one output_truncated with the dropped count"
    );
    eprintln!(
        "1 GiB flood: {:.2} s ({:.0} MB/s), peak RSS {} MB (before {} MB)",
        elapsed.as_secs_f64(),
        GIB as f64 / 1e6 / elapsed.as_secs_f64(),
        peak >> 20,
        before >> 20
    );
    assert!(peak < 200 * 1024 * 1024, "peak RSS {} MB", peak >> 20);
}
