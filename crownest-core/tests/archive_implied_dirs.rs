//! Every tree node counts (issue 12): directories implied by deeper paths are entries, and
//! the bytes of all entry paths (implied directories' included) are budgeted, so that a
//! small archive of deep paths cannot make the policy hold, or the writer create, millions
//! of directories. The hostile shapes are the ones of the issue: 16 000 (and 4 000) empty
//! files at depth 64, each under its own top-level directory.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod archive_common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use archive_common::*;
use crownest_core::archive::ExtractPolicy;
use crownest_core::{Limits, RejectReason};

/// The path of entry `i` of the deep archive: a unique top-level directory, 62 directories
/// named `d<k>` padded with `pad` bytes, and a file `f`: 64 components in all (the default
/// depth limit), 63 of them directories only implied.
fn deep_path(i: usize, pad: usize) -> String {
    let mut p = format!("t{i:05}");
    for k in 0..62 {
        p.push_str(&format!("/d{k:02}"));
        p.extend(std::iter::repeat_n('x', pad));
    }
    p.push_str("/f");
    p
}

/// `n` empty files at [`deep_path`], named through PAX `path` records (the paths are over
/// the 100 bytes of a ustar name), with no directory entries.
fn deep_archive(n: usize, pad: usize) -> Vec<u8> {
    let mut tar = RawTar::new();
    for i in 0..n {
        let path = deep_path(i, pad);
        tar = tar
            .pax(&[("path", path.as_bytes())])
            .file(&format!("t{i:05}"), b"");
    }
    gz_best(&tar.finish())
}

/// What one entry at `path` costs the path-bytes budget when none of its ancestors exists
/// yet: its own path and the path of every directory it implies.
fn cost_with_implied(path: &str) -> u64 {
    (path.len() + path.match_indices('/').map(|(i, _)| i).sum::<usize>()) as u64
}

#[test]
fn sixteen_thousand_deep_files_under_unique_tops_are_refused() {
    // The archive of the issue: ~1 M implied directories of paths up to 3 790 bytes.
    let gz_bytes = deep_archive(16_000, 57);
    assert!(gz_bytes.len() < 1 << 20, "{} bytes", gz_bytes.len());
    let per_entry = cost_with_implied(&deep_path(0, 57));
    assert_eq!(per_entry, 123_301);
    // With the default limits the path bytes run out first: 64 MiB / 123 301 = 544.3.
    let budget = Limits::default().path_bytes;
    assert_eq!(budget, 64 << 20);
    let first_over = (budget / per_entry) as usize;
    assert_eq!(first_over, 544);
    assert_rejected_in(
        Sandbox::on_tmpfs(),
        &gz_bytes,
        &ExtractPolicy::default(),
        RejectReason::TooManyPathBytes,
        Some(&deep_path(first_over, 57)),
    );
    // Raised to the engine maximum, the entries run out instead: 64 entries per file (the
    // file and its 63 directories), 200 000 / 64 = 3 125 files fit.
    let mut policy = ExtractPolicy::default();
    policy.max_path_bytes = Limits::default_maxima().path_bytes;
    assert_rejected_in(
        Sandbox::on_tmpfs(),
        &gz_bytes,
        &policy,
        RejectReason::TooManyEntries,
        Some(&deep_path(3_125, 57)),
    );
}

#[test]
fn four_thousand_deep_files_under_unique_tops_are_refused() {
    // Short components: the 4 000 files' paths (4 352 bytes each with their implied
    // directories) fit the path budget, but their 256 000 entries do not fit 200 000.
    let gz_bytes = deep_archive(4_000, 0);
    assert!(cost_with_implied(&deep_path(0, 0)) * 4_000 < Limits::default().path_bytes);
    assert_rejected_in(
        Sandbox::on_tmpfs(),
        &gz_bytes,
        &ExtractPolicy::default(),
        RejectReason::TooManyEntries,
        Some(&deep_path(3_125, 0)),
    );
}

/// The expected snapshot of [`deep_archive`]`(n, pad)` extracted: every implied directory
/// with the default mode, every file empty.
fn deep_tree(n: usize, pad: usize) -> BTreeMap<PathBuf, String> {
    let mut want = BTreeMap::new();
    for i in 0..n {
        let path = deep_path(i, pad);
        for (end, _) in path.match_indices('/') {
            want.insert(PathBuf::from(&path[..end]), "dir 755".to_string());
        }
        want.insert(PathBuf::from(&path), "file 644 []".to_string());
    }
    want
}

#[test]
fn implied_directories_that_fit_are_accepted_and_extract_exactly() {
    let n = 40;
    let gz_bytes = deep_archive(n, 3);
    let sb = Sandbox::new();
    let summary = extract(&gz_bytes, &sb.dest(), &ExtractPolicy::default()).unwrap();
    assert_eq!(snapshot(&sb.dest()), deep_tree(n, 3));
    sb.assert_only_dest();
    // The implied directories are counted as entries and as directories.
    assert_eq!(summary.entries, (n * 64) as u64);
    assert_eq!(summary.dirs, (n * 63) as u64);
    assert_eq!(summary.files, n as u64);
    assert_eq!(
        validate(&gz_bytes, &ExtractPolicy::default()).unwrap(),
        summary
    );

    // Exactly at the entry limit is fine; one entry less and the last file is refused,
    // although the archive holds only 40 entries of its own.
    let mut policy = ExtractPolicy::default();
    policy.max_entries = (n * 64) as u64;
    let sb = Sandbox::new();
    extract(&gz_bytes, &sb.dest(), &policy).unwrap();
    assert_eq!(snapshot(&sb.dest()), deep_tree(n, 3));
    policy.max_entries -= 1;
    assert_rejected_with(
        &gz_bytes,
        &policy,
        RejectReason::TooManyEntries,
        Some(&deep_path(n - 1, 3)),
    );
}

#[test]
fn explicit_and_implied_directories_cost_the_same() {
    // "a/b/file" implies "a" and "a/b": 1 + 3 + 8 = 12 path bytes and 3 entries, exactly
    // what the same tree costs with its directories written out.
    let implied = gz(&RawTar::new().file("a/b/file", b"x").finish());
    let explicit = gz(&RawTar::new()
        .dir("a/")
        .dir("a/b/")
        .file("a/b/file", b"x")
        .finish());
    for gz_bytes in [&implied, &explicit] {
        let mut policy = ExtractPolicy::default();
        policy.max_path_bytes = 12;
        policy.max_entries = 3;
        let s = validate(gz_bytes, &policy).unwrap();
        assert_eq!((s.entries, s.dirs, s.files), (3, 2, 1));
        let sb = Sandbox::new();
        extract(gz_bytes, &sb.dest(), &policy).unwrap();
        assert_eq!(
            std::fs::read(sb.dest().join("a/b/file")).unwrap(),
            b"x",
            "extracted"
        );
        policy.max_path_bytes = 11;
        assert_rejected_with(
            gz_bytes,
            &policy,
            RejectReason::TooManyPathBytes,
            Some("a/b/file"),
        );
        policy.max_path_bytes = 12;
        policy.max_entries = 2;
        assert_rejected_with(
            gz_bytes,
            &policy,
            RejectReason::TooManyEntries,
            Some("a/b/file"),
        );
    }
}

#[test]
fn path_bytes_budget() {
    // 1 000 files of 100-byte names in one directory: 1 000 × 100 + 3 ("dir") bytes.
    let name = |i: usize| format!("dir/{i:04}{}", "n".repeat(92));
    let mut tar = RawTar::new();
    for i in 0..1_000 {
        assert_eq!(name(i).len(), 100);
        tar = tar.file(&name(i), b"");
    }
    let gz_bytes = gz(&tar.finish());
    let mut policy = ExtractPolicy::default();
    policy.max_path_bytes = 100_003;
    let s = validate(&gz_bytes, &policy).unwrap();
    assert_eq!((s.entries, s.files, s.dirs), (1_001, 1_000, 1));
    policy.max_path_bytes = 100_002;
    assert_rejected_with(
        &gz_bytes,
        &policy,
        RejectReason::TooManyPathBytes,
        Some(&name(999)),
    );
    // A repeated path is paid again (its entry is read and written again).
    let tar = RawTar::new()
        .file("abcd", b"1")
        .file("abcd", b"2")
        .file("abcd", b"3")
        .finish();
    policy.max_path_bytes = 11;
    assert_rejected_with(
        &gz(&tar),
        &policy,
        RejectReason::TooManyPathBytes,
        Some("abcd"),
    );
    // The limit reaches the policy from a run's limits.
    let mut limits = Limits::default();
    limits.path_bytes = 4242;
    assert_eq!(ExtractPolicy::from_limits(&limits).max_path_bytes, 4242);
}
