//! The no-follow artifact collector (DESIGN §2.5).
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use crownest_core::artifact::{CollectedArtifact, SkipReason, SkippedEntry, collect_from_dir};
use crownest_core::event::ArtifactErrorReason;
use crownest_core::run::ArtifactKind;

fn workspace() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    std::fs::create_dir_all(w.join("out/sub/empty")).unwrap();
    std::fs::write(w.join("out/report.txt"), b"all good\n").unwrap();
    std::fs::write(w.join("out/sub/b.bin"), [0u8, 1, 2, 3]).unwrap();
    std::fs::write(w.join("out/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(w.join("out/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn bytes(mut a: CollectedArtifact) -> Vec<u8> {
    let mut v = Vec::new();
    a.reader.read_to_end(&mut v).unwrap();
    assert_eq!(
        v.len() as u64,
        a.size_bytes,
        "size_bytes must equal what reader yields"
    );
    v
}

fn reason(root: &Path, path: &str, max: u64) -> ArtifactErrorReason {
    collect_from_dir(root, path, max).unwrap_err().reason
}

#[test]
fn regular_file() {
    let w = workspace();
    let a = collect_from_dir(w.path(), "out/run.sh", 1 << 20).unwrap();
    assert_eq!(a.kind, ArtifactKind::File);
    assert_eq!(a.mode, 0o755);
    assert_eq!(bytes(a), b"#!/bin/sh\n");
    let a = collect_from_dir(w.path(), "./out//report.txt", 1 << 20).unwrap();
    assert_eq!(bytes(a), b"all good\n");
}

#[test]
fn missing() {
    let w = workspace();
    assert_eq!(
        reason(w.path(), "nope.txt", 100),
        ArtifactErrorReason::NotFound
    );
    assert_eq!(
        reason(w.path(), "nope/x.txt", 100),
        ArtifactErrorReason::NotFound
    );
    // A component that is a regular file.
    assert_eq!(
        reason(w.path(), "out/report.txt/x", 100),
        ArtifactErrorReason::NotFound
    );
}

#[test]
fn symlink_to_etc_passwd_is_not_followed() {
    let w = workspace();
    symlink("/etc/passwd", w.path().join("out/passwd")).unwrap();
    let f = collect_from_dir(w.path(), "out/passwd", 1 << 20).unwrap_err();
    assert_eq!(f.reason, ArtifactErrorReason::EscapesWorkspace);
    assert!(f.message.contains("out/passwd"), "{}", f.message);
    symlink("../../etc/shadow", w.path().join("out/climb")).unwrap();
    assert_eq!(
        reason(w.path(), "out/climb", 1 << 20),
        ArtifactErrorReason::EscapesWorkspace
    );
    // A symlink that stays inside is still not followed.
    symlink("report.txt", w.path().join("out/inside")).unwrap();
    let f = collect_from_dir(w.path(), "out/inside", 1 << 20).unwrap_err();
    assert_eq!(f.reason, ArtifactErrorReason::NotRegular);
    assert!(f.message.contains("not followed"), "{}", f.message);
}

#[test]
fn symlink_component_in_the_middle() {
    let w = workspace();
    symlink("out", w.path().join("alias")).unwrap();
    assert_eq!(
        reason(w.path(), "alias/report.txt", 1 << 20),
        ArtifactErrorReason::NotRegular
    );
    symlink("/etc", w.path().join("etc")).unwrap();
    assert_eq!(
        reason(w.path(), "etc/passwd", 1 << 20),
        ArtifactErrorReason::EscapesWorkspace
    );
}

/// Runs `f` on its own thread and waits at most 5 s for it: a collector that opened the
/// fifo would block forever (the thread is then left behind; the test fails).
async fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("collection did not hang on the fifo")
        .unwrap()
}

#[tokio::test]
async fn fifo_does_not_hang() {
    let w = workspace();
    let fifo = w.path().join("out/pipe");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    let root = w.path().to_path_buf();
    assert_eq!(
        within_5s(move || reason(&root, "out/pipe", 1 << 20)).await,
        ArtifactErrorReason::NotRegular
    );
    // Inside a directory artifact, the fifo is skipped and reported, never opened.
    let root = w.path().to_path_buf();
    let a = within_5s(move || collect_from_dir(&root, "out", 1 << 20).unwrap()).await;
    assert_eq!(
        a.skipped,
        vec![SkippedEntry {
            path: "out/pipe".into(),
            reason: SkipReason::SpecialFile
        }]
    );
}

#[test]
fn directory_becomes_a_deterministic_tar() {
    let w = workspace();
    symlink("/etc/passwd", w.path().join("out/sub/link")).unwrap();
    let a = collect_from_dir(w.path(), "out", 1 << 20).unwrap();
    assert_eq!(a.kind, ArtifactKind::Directory);
    assert_eq!(
        a.skipped,
        vec![SkippedEntry {
            path: "out/sub/link".into(),
            reason: SkipReason::Symlink
        }]
    );
    let data = bytes(a);
    let again = bytes(collect_from_dir(w.path(), "out", 1 << 20).unwrap());
    assert_eq!(data, again, "the tar is deterministic");
    let mut ar = tar::Archive::new(&data[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.gid().unwrap(), 0);
        let path = e
            .path()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        seen.push((path, h.entry_type(), h.mode().unwrap(), body));
    }
    let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        ["report.txt", "run.sh", "sub", "sub/b.bin", "sub/empty"],
        "sorted, links skipped"
    );
    assert_eq!(seen[0].3, b"all good\n");
    assert_eq!(seen[1].2, 0o755);
    assert!(seen[2].1.is_dir() && seen[4].1.is_dir());
    assert_eq!(seen[3].3, [0u8, 1, 2, 3]);
}

#[test]
fn too_large() {
    let w = workspace();
    std::fs::write(w.path().join("big"), vec![1u8; 10_000]).unwrap();
    assert_eq!(
        reason(w.path(), "big", 9_999),
        ArtifactErrorReason::TooLarge
    );
    assert_eq!(
        bytes(collect_from_dir(w.path(), "big", 10_000).unwrap()).len(),
        10_000
    );
    // A directory's tar: refused before the file that does not fit is read.
    std::fs::write(w.path().join("out/huge"), vec![1u8; 100_000]).unwrap();
    assert_eq!(
        reason(w.path(), "out", 50_000),
        ArtifactErrorReason::TooLarge
    );
}

#[test]
fn invalid_paths() {
    let w = workspace();
    for p in [
        "",
        "/etc/passwd",
        "../x",
        "out/../../x",
        ".",
        "a\\b",
        "nul\0",
    ] {
        assert_eq!(
            reason(w.path(), p, 100),
            ArtifactErrorReason::InvalidPath,
            "{p:?}"
        );
    }
}
