//! Throughput of archive intake: `validate` (hash + inflate + policy, no writes) and
//! `extract` (the same pass plus the writer thread) on a generated repo-like tree.
//!
//! `cargo bench --bench extract`; the end-to-end comparison with `sha256sum && tar -xzf`
//! is `scripts/bench-extract.sh`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crownest_core::archive::{self, ExtractPolicy};

/// ~2 000 text-ish files in 100 directories (~8 MB inflated).
fn repo_like() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let words = [
        "fn", "let", "mut", "impl", "struct", "return", "match", "self", "data", "value", "error",
        "result", "buffer", "config", "request", "handler", "=>", "{", "}", ";",
    ];
    for d in 0..100 {
        for f in 0..20 {
            let mut text = String::new();
            let len = 500 + (seed % 7000) as usize;
            while text.len() < len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(words[(seed % words.len() as u64) as usize]);
                text.push(if seed.is_multiple_of(11) { '\n' } else { ' ' });
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(
                &mut h,
                format!("pkg{d:03}/src/mod{f:02}.rs"),
                text.as_bytes(),
            )
            .unwrap();
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn bench(c: &mut Criterion) {
    let gz = repo_like();
    let policy = ExtractPolicy::default();
    let inflated = archive::validate(&gz[..], &policy, &mut |_| {})
        .unwrap()
        .bytes;
    let mut g = c.benchmark_group("archive");
    g.throughput(Throughput::Bytes(inflated));
    g.sample_size(20);
    g.bench_function("validate", |b| {
        b.iter(|| archive::validate(&gz[..], &policy, &mut |_| {}).unwrap())
    });
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let mut n = 0u64;
    g.bench_function("extract", |b| {
        // Only the extraction is timed, not the removal of the tree afterwards.
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let dest = base.path().join(format!("d{n}"));
                let start = std::time::Instant::now();
                archive::extract(&gz[..], &dest, &policy, &mut |_| {}).unwrap();
                total += start.elapsed();
                std::fs::remove_dir_all(&dest).unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
