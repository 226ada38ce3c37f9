//! Valid archives extract byte-exactly: long names (GNU and PAX), unicode, modes, empty
//! directories, `./` prefixes, links inside the root, and a 50 000-file tree.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod archive_common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use archive_common::*;
use crownest_core::archive::{self, ExtractPolicy, ExtractProgress};
use crownest_core::event::ArchivePhase;

/// What a generated source tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
}

/// Builds a gzipped tar (GNU headers, so long names use `L` records) from a tree description.
fn build(tree: &BTreeMap<String, Node>, prefix: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in tree {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        let name = format!("{prefix}{path}");
        match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{name}/"), std::io::empty())
                    .unwrap();
            }
            Node::File(mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, &data[..]).unwrap();
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, &name, target).unwrap();
            }
        }
    }
    gz(&b.into_inner().unwrap())
}

/// Reads a tree back from disk (no-follow).
fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let key = r.to_str().unwrap().to_string();
            let node = if md.file_type().is_symlink() {
                Node::Symlink(
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                )
            } else if md.is_dir() {
                stack.push(r.clone());
                Node::Dir(mode)
            } else {
                Node::File(mode, std::fs::read(&p).unwrap())
            };
            out.insert(key, node);
        }
    }
    out
}

fn extract_ok(gz: &[u8]) -> (Sandbox, BTreeMap<String, Node>) {
    let sb = Sandbox::new();
    let policy = ExtractPolicy::default();
    let v = validate(gz, &policy).unwrap();
    let e = extract(gz, &sb.dest(), &policy).unwrap();
    assert_eq!(v, e, "validate and extract see the same archive");
    sb.assert_only_dest();
    let tree = read_tree(&sb.dest());
    (sb, tree)
}

#[test]
fn long_unicode_names_modes_links_and_empty_dirs() {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let mut tree = BTreeMap::new();
    tree.insert("src".to_string(), Node::Dir(0o755));
    tree.insert(
        "src/main.py".into(),
        Node::File(0o644, b"print('hi')\n".to_vec()),
    );
    tree.insert(
        "src/run.sh".into(),
        Node::File(0o755, b"#!/bin/sh\necho hi\n".to_vec()),
    );
    tree.insert("empty".into(), Node::Dir(0o755));
    tree.insert("nested".into(), Node::Dir(0o755));
    tree.insert("nested/empty".into(), Node::Dir(0o700));
    tree.insert("données".into(), Node::Dir(0o755));
    tree.insert(
        "données/日本語 ✓.txt".into(),
        Node::File(0o600, "héllo".into()),
    );
    tree.insert(long_dir.clone(), Node::Dir(0o755));
    tree.insert(long_file.clone(), Node::File(0o644, vec![42; 70_000]));
    tree.insert("link".into(), Node::Symlink("src/main.py".into()));
    tree.insert("src/up".into(), Node::Symlink("../données".into()));
    tree.insert("dirlink".into(), Node::Symlink("nested".into()));
    let (_sb, got) = extract_ok(&build(&tree, ""));
    assert_eq!(got, tree);
}

#[test]
fn dot_slash_prefixes() {
    let mut tree = BTreeMap::new();
    tree.insert("a".to_string(), Node::Dir(0o755));
    tree.insert("a/b.txt".into(), Node::File(0o644, b"b".to_vec()));
    tree.insert("c.txt".into(), Node::File(0o644, b"c".to_vec()));
    let tar = RawTar::new()
        .entry(raw_header(b"./", b'5', 0, b"", 0o750), b"")
        .dir("./a/")
        .file("./a/b.txt", b"b")
        .file("./c.txt", b"c")
        .finish();
    let (sb, got) = extract_ok(&gz(&tar));
    assert_eq!(got, tree);
    // The root takes the mode of the `./` entry (owner rwx kept).
    let root = std::fs::metadata(sb.dest()).unwrap().permissions().mode() & 0o777;
    assert_eq!(root, 0o750);
    // The same tree with `./` on every name written by the tar builder.
    let (_sb, got) = extract_ok(&build(&tree, "./"));
    assert_eq!(got, tree);
}

#[test]
fn setuid_setgid_sticky_are_stripped_and_exec_kept() {
    let tar = RawTar::new()
        .entry(raw_header(b"suid", b'0', 2, b"", 0o4755), b"#!")
        .entry(raw_header(b"sgid", b'0', 0, b"", 0o2750), b"")
        .entry(raw_header(b"sticky/", b'5', 0, b"", 0o1777), b"")
        .entry(raw_header(b"locked/", b'5', 0, b"", 0o500), b"")
        .entry(raw_header(b"locked/inner", b'0', 1, b"", 0o444), b"x")
        .finish();
    let (_sb, got) = extract_ok(&gz(&tar));
    assert_eq!(got["suid"], Node::File(0o755, b"#!".to_vec()));
    assert_eq!(got["sgid"], Node::File(0o750, vec![]));
    assert_eq!(got["sticky"], Node::Dir(0o777));
    // Directories keep at least rwx for the owner so extraction (and cleanup) can proceed.
    assert_eq!(got["locked"], Node::Dir(0o700));
    assert_eq!(got["locked/inner"], Node::File(0o444, b"x".to_vec()));
}

#[test]
fn pax_long_names_and_hardlinks() {
    let long = format!("{}/{}", "p".repeat(90), "q".repeat(90));
    let link_target = format!("{}/{}", "p".repeat(90), "t".repeat(120));
    let tar = RawTar::new()
        .pax(&[("path", long.as_bytes())])
        .entry(raw_header(b"truncated-name", b'0', 5, b"", 0o644), b"hello")
        .pax(&[("path", b"hl"), ("linkpath", long.as_bytes())])
        .entry(raw_header(b"x", b'1', 0, b"x", 0o644), b"")
        .pax(&[("linkpath", link_target.as_bytes()), ("mtime", b"1.5")])
        .entry(raw_header(b"sym", b'2', 0, b"", 0o777), b"")
        .finish();
    let (sb, got) = extract_ok(&gz(&tar));
    assert_eq!(got[&long], Node::File(0o644, b"hello".to_vec()));
    assert_eq!(got["hl"], Node::File(0o644, b"hello".to_vec()));
    assert_eq!(got["sym"], Node::Symlink(link_target));
    // Hardlinks are real hardlinks (same inode), created with linkat inside the root.
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(sb.dest().join(&long)).unwrap();
    let b = std::fs::metadata(sb.dest().join("hl")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert!(!got.contains_key("truncated-name"));
}

#[test]
fn mtime_is_kept_and_progress_is_throttled() {
    let mut tree = BTreeMap::new();
    for i in 0..1000 {
        tree.insert(
            format!("f{i:04}"),
            Node::File(0o644, vec![b'a' + (i % 26) as u8; 100]),
        );
    }
    let gz_bytes = build(&tree, "");
    let sb = Sandbox::new();
    let mut calls: Vec<ExtractProgress> = Vec::new();
    let s = archive::extract(
        &gz_bytes[..],
        &sb.dest(),
        &ExtractPolicy::default(),
        &mut |p| calls.push(p),
    )
    .unwrap();
    assert_eq!(s.entries, 1000);
    assert_eq!(s.files, 1000);
    assert!(calls.iter().all(|c| c.phase == ArchivePhase::Extracting));
    assert!(
        calls.len() <= 1000 / 100 + 2,
        "{} progress calls",
        calls.len()
    );
    assert_eq!(calls.last().unwrap().entries, 1000);
    assert_eq!(calls.last().unwrap().bytes_done, gz_bytes.len() as u64);
    let md = std::fs::metadata(sb.dest().join("f0001")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.mtime(), 1_600_000_000);
    let mut vcalls = 0;
    archive::validate(&gz_bytes[..], &ExtractPolicy::default(), &mut |p| {
        assert_eq!(p.phase, ArchivePhase::Verifying);
        vcalls += 1;
    })
    .unwrap();
    assert!(vcalls >= 1);
}

#[test]
fn fifty_thousand_files() {
    let mut tree = BTreeMap::new();
    for d in 0..100 {
        tree.insert(format!("dir{d:03}"), Node::Dir(0o755));
        for f in 0..500 {
            let i = d * 500 + f;
            let mode = if i % 7 == 0 { 0o755 } else { 0o644 };
            let data = format!("file {i}\n").repeat(i % 13);
            tree.insert(
                format!("dir{d:03}/f{f:03}.txt"),
                Node::File(mode, data.into_bytes()),
            );
        }
    }
    let gz_bytes = build(&tree, "");
    let (_sb, got) = extract_ok(&gz_bytes);
    assert_eq!(got.len(), tree.len());
    assert!(got == tree, "extracted tree differs from the source tree");
}

/// Entries whose order matters even though the extractor writes files on several threads
/// (by parent directory): a multi-chunk file followed at once by a hardlink to it from
/// another directory, a path written twice (the later entry wins), a symlink and a file in
/// one directory, all among enough directories to keep every writer thread busy.
#[test]
fn order_dependent_entries_land_as_archive_order_says() {
    let mut b = tar::Builder::new(Vec::new());
    let mut expected = BTreeMap::new();
    let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    for d in 0..300 {
        expected.insert(format!("d{d:03}"), Node::Dir(0o755));
        for f in 0..4 {
            let data = format!("{d}/{f}\n").repeat(d % 7 + 1).into_bytes();
            file(&mut b, &format!("d{d:03}/f{f}"), 0o644, &data);
            expected.insert(format!("d{d:03}/f{f}"), Node::File(0o644, data));
        }
    }
    let big: Vec<u8> = (0..(7 << 19)).map(|i: u32| (i * 31 % 251) as u8).collect();
    file(&mut b, "big/blob.bin", 0o755, &big);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_link(&mut h, "other/link.bin", "big/blob.bin")
        .unwrap();
    file(&mut b, "other/after.txt", 0o644, b"after");
    file(&mut b, "d000/f0", 0o600, b"replaced");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "d001/link", "f1").unwrap();
    file(&mut b, "d001/zz", 0o640, b"beside the link");
    for dir in ["big", "other"] {
        expected.insert(dir.into(), Node::Dir(0o755));
    }
    expected.insert("big/blob.bin".into(), Node::File(0o755, big.clone()));
    expected.insert("other/link.bin".into(), Node::File(0o755, big));
    expected.insert(
        "other/after.txt".into(),
        Node::File(0o644, b"after".to_vec()),
    );
    expected.insert("d000/f0".into(), Node::File(0o600, b"replaced".to_vec()));
    expected.insert("d001/link".into(), Node::Symlink("f1".into()));
    expected.insert(
        "d001/zz".into(),
        Node::File(0o640, b"beside the link".to_vec()),
    );

    let (sb, got) = extract_ok(&gz(&b.into_inner().unwrap()));
    assert_eq!(got.len(), expected.len());
    for (path, node) in &expected {
        assert_eq!(got.get(path), Some(node), "{path}");
    }
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(sb.dest().join("big/blob.bin")).unwrap();
    let l = std::fs::metadata(sb.dest().join("other/link.bin")).unwrap();
    assert_eq!(a.ino(), l.ino(), "a real hardlink");
}
