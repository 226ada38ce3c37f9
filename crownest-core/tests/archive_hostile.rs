//! Hostile archives: one test per rule of the extraction policy (DESIGN §2.4). Each asserts
//! the typed reason and the entry, that `validate` agrees with `extract`, and that nothing
//! appeared next to the destination (no dest, no staging directory, no escaped file).
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod archive_common;

use archive_common::*;
use crownest_core::archive::{self, ExtractPolicy};
use crownest_core::run::ArchiveDescriptor;
use crownest_core::{Error, RejectReason, Sha256Digest};

fn ok_file() -> RawTar {
    RawTar::new().file("ok.txt", b"fine")
}

#[test]
fn absolute_path() {
    let target = format!("/tmp/crownest-abs-{}/pwned", std::process::id());
    let tar = ok_file().file(&target, b"x").finish();
    assert_rejected(&gz(&tar), RejectReason::AbsolutePath, Some(&target));
    assert!(!std::path::Path::new(&target).exists());
}

#[test]
fn parent_traversal() {
    let tar = ok_file().file("../escaped", b"x").finish();
    assert_rejected(&gz(&tar), RejectReason::ParentTraversal, Some("../escaped"));
    let tar = ok_file().file("a/../../escaped", b"x").finish();
    assert_rejected(
        &gz(&tar),
        RejectReason::ParentTraversal,
        Some("a/../../escaped"),
    );
}

#[test]
fn entry_through_symlink() {
    // The symlink itself is legal (it stays inside); writing through it is not.
    let tar = ok_file()
        .dir("sub/")
        .symlink("link", "sub")
        .file("link/x", b"x")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::ThroughSymlink, Some("link/x"));
    // The classic escape: a symlink to the parent, then a file through it.
    let tar = ok_file()
        .symlink("dir/up", "..")
        .file("dir/up/escaped", b"x")
        .finish();
    assert_rejected(
        &gz(&tar),
        RejectReason::ThroughSymlink,
        Some("dir/up/escaped"),
    );
}

#[test]
fn symlink_escapes() {
    let tar = ok_file().symlink("evil", "../outside/sentinel").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("evil"));
    let tar = ok_file().symlink("abs", "/etc/passwd").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("abs"));
    let tar = ok_file().symlink("a/b/deep", "../../../x").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("a/b/deep"));
    // `..` after a normal component could climb through another symlink: refused.
    let tar = ok_file()
        .symlink("a/s", "..")
        .symlink("t", "a/s/..")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("t"));
}

#[test]
fn hardlink_escapes() {
    let tar = ok_file().hardlink("h", "../outside/sentinel").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("h"));
    let tar = ok_file().hardlink("h", "/etc/passwd").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("h"));
    // Not an earlier regular file of the archive.
    let tar = ok_file()
        .hardlink("h", "later.txt")
        .file("later.txt", b"x")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("h"));
    let tar = ok_file().dir("d/").hardlink("h", "d").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("h"));
    let tar = ok_file().symlink("s", "ok.txt").hardlink("h", "s").finish();
    assert_rejected(&gz(&tar), RejectReason::LinkEscapes, Some("h"));
}

#[test]
fn special_files() {
    for (ty, name) in [
        (b'3', "chardev"),
        (b'4', "blockdev"),
        (b'6', "fifo"),
        (b'S', "sparse"),
        (b'V', "volume"),
    ] {
        let tar = ok_file()
            .entry(raw_header(name.as_bytes(), ty, 0, b"", 0o644), b"")
            .finish();
        assert_rejected(&gz(&tar), RejectReason::SpecialFile, Some(name));
    }
}

#[test]
fn invalid_paths() {
    let mut policy = ExtractPolicy::default();
    policy.max_path_len = 50;
    policy.max_depth = 4;
    let long = "x".repeat(51);
    let tar = ok_file().file(&long, b"x").finish();
    assert_rejected_with(&gz(&tar), &policy, RejectReason::InvalidPath, Some(&long));
    let tar = ok_file().file("a/b/c/d/e", b"x").finish();
    assert_rejected_with(
        &gz(&tar),
        &policy,
        RejectReason::InvalidPath,
        Some("a/b/c/d/e"),
    );
    let tar = ok_file().file("back\\slash", b"x").finish();
    assert_rejected(&gz(&tar), RejectReason::InvalidPath, Some("back\\slash"));
    let tar = ok_file().file("new\nline", b"x").finish();
    assert_rejected(&gz(&tar), RejectReason::InvalidPath, Some("new\nline"));
    let tar = ok_file()
        .entry(raw_header(b"bad\xff", b'0', 0, b"", 0o644), b"")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::InvalidPath, Some("bad\u{fffd}"));
    // A PAX path may carry a NUL, which a header name cannot.
    let tar = ok_file()
        .pax(&[("path", b"nul\0byte")])
        .file("placeholder", b"")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::InvalidPath, Some("nul\0byte"));
    // Only a directory may name the root.
    let tar = ok_file().symlink("./", "ok.txt").finish();
    assert_rejected(&gz(&tar), RejectReason::InvalidPath, Some("./"));
}

#[test]
fn metadata_records_are_sized_before_they_are_read() {
    // A PAX header claiming 1 TiB: refused from the header alone (the data is not even there).
    let tar = ok_file()
        .entry(
            raw_header(b"PaxHeaders/big", b'x', 1 << 40, b"", 0o644),
            b"",
        )
        .unterminated();
    assert_rejected(
        &gz(&tar),
        RejectReason::MetadataTooLarge,
        Some("PaxHeaders/big"),
    );
    let tar = ok_file()
        .entry(raw_header(b"././@LongLink", b'L', 1 << 40, b"", 0o644), b"")
        .unterminated();
    assert_rejected(
        &gz(&tar),
        RejectReason::MetadataTooLarge,
        Some("././@LongLink"),
    );
    // A real 2 MiB PAX record over the 1 MiB default.
    let big = vec![b'a'; 2 << 20];
    let tar = ok_file().pax(&[("comment", &big)]).file("f", b"").finish();
    assert_rejected(
        &gz(&tar),
        RejectReason::MetadataTooLarge,
        Some("PaxHeaders/x"),
    );
    // The same record under a raised limit is fine.
    let mut policy = ExtractPolicy::default();
    policy.max_metadata_bytes = 4 << 20;
    validate(&gz(&tar), &policy).unwrap();
}

#[test]
fn too_many_entries() {
    let mut policy = ExtractPolicy::default();
    policy.max_entries = 10;
    let mut tar = RawTar::new();
    for i in 0..11 {
        tar = tar.file(&format!("f{i}"), b"x");
    }
    assert_rejected_with(
        &gz(&tar.finish()),
        &policy,
        RejectReason::TooManyEntries,
        Some("f10"),
    );
}

#[test]
fn too_many_bytes() {
    let mut policy = ExtractPolicy::default();
    policy.max_entry_bytes = 1000;
    policy.max_total_bytes = 1500;
    let tar = RawTar::new().file("big", &[7u8; 1001]).finish();
    assert_rejected_with(&gz(&tar), &policy, RejectReason::TooManyBytes, Some("big"));
    let tar = RawTar::new()
        .file("a", &[7u8; 800])
        .file("b", &[7u8; 800])
        .finish();
    assert_rejected_with(&gz(&tar), &policy, RejectReason::TooManyBytes, Some("b"));
    // A header claiming 1 PiB is refused from the header, before any data is expected.
    let tar = RawTar::new()
        .entry(raw_header(b"huge", b'0', 1 << 50, b"", 0o644), b"")
        .unterminated();
    assert_rejected(&gz(&tar), RejectReason::TooManyBytes, Some("huge"));
}

#[test]
fn duplicate_entries_that_change_kind() {
    let tar = ok_file().file("x", b"1").dir("x/").finish();
    assert_rejected(&gz(&tar), RejectReason::DuplicateEntry, Some("x/"));
    let tar = ok_file().file("x", b"1").symlink("x", "ok.txt").finish();
    assert_rejected(&gz(&tar), RejectReason::DuplicateEntry, Some("x"));
    let tar = ok_file().dir("d/").file("d", b"1").finish();
    assert_rejected(&gz(&tar), RejectReason::DuplicateEntry, Some("d"));
    // A path through a regular file.
    let tar = ok_file().file("f", b"1").file("f/g", b"2").finish();
    assert_rejected(&gz(&tar), RejectReason::DuplicateEntry, Some("f/g"));
}

#[test]
fn repeated_regular_file_overwrites() {
    let tar = ok_file().file("x", b"first").file("x", b"second").finish();
    let sb = Sandbox::new();
    extract(&gz(&tar), &sb.dest(), &ExtractPolicy::default()).unwrap();
    assert_eq!(std::fs::read(sb.dest().join("x")).unwrap(), b"second");
    sb.assert_only_dest();
}

#[test]
fn compression_ratio() {
    // 20 MiB of zeros gzip to ~20 KiB: a ratio of ~1000, over the default 200 once past the
    // 10 MiB grace.
    let tar = RawTar::new()
        .file("zeros.bin", &vec![0u8; 20 << 20])
        .finish();
    let bomb = gz_best(&tar);
    assert_rejected(&bomb, RejectReason::CompressionRatio, Some("zeros.bin"));
    // With a high enough ratio limit it passes.
    let mut policy = ExtractPolicy::default();
    policy.max_ratio = 100_000;
    validate(&bomb, &policy).unwrap();
}

#[test]
fn corrupt_or_truncated_gzip() {
    let tar = ok_file().file("more.txt", &[b'z'; 100_000]).finish();
    let good = gz(&tar);
    // Truncated in the middle of the deflate stream.
    assert_rejected(
        &good[..good.len() / 2],
        RejectReason::Corrupt,
        Some("more.txt"),
    );
    // Truncated inside the 8-byte trailer.
    assert_rejected(&good[..good.len() - 3], RejectReason::Corrupt, None);
    // CRC32 of the trailer flipped.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 8] ^= 0xff;
    assert_rejected(&bad, RejectReason::Corrupt, None);
    // Not gzip at all, and empty input.
    assert_rejected(&tar, RejectReason::Corrupt, None);
    assert_rejected(b"", RejectReason::Corrupt, None);
}

#[test]
fn corrupt_tar() {
    let mut tar = ok_file().finish();
    tar[0] ^= 1; // the header checksum no longer matches
    assert_rejected(&gz(&tar), RejectReason::Corrupt, None);
    // A tar without its end-of-archive marker.
    assert_rejected(&gz(&ok_file().unterminated()), RejectReason::Corrupt, None);
    // An entry whose data is cut short.
    let mut t = ok_file().0;
    t.extend_from_slice(&raw_header(b"short", b'0', 5000, b"", 0o644));
    t.extend_from_slice(&[1u8; 1000]);
    assert_rejected(&gz(&t), RejectReason::Corrupt, Some("short"));
    // A PAX size that disagrees with the header (parser-differential trick).
    let tar = RawTar::new()
        .pax(&[("size", b"0")])
        .file("f", b"hidden")
        .finish();
    assert_rejected(&gz(&tar), RejectReason::Corrupt, Some("f"));
}

#[test]
fn trailing_data() {
    let tar = ok_file().finish();
    let mut after = gz(&tar);
    after.extend_from_slice(b"garbage");
    assert_rejected(&after, RejectReason::TrailingData, None);
    // A second gzip member is trailing data too (GzDecoder, not MultiGzDecoder).
    let mut two = gz(&tar);
    two.extend_from_slice(&gz(&RawTar::new().file("smuggled", b"x").finish()));
    assert_rejected(&two, RejectReason::TrailingData, None);
    // Non-zero bytes after the end-of-archive marker, inside the gzip stream.
    let mut inner = tar.clone();
    inner.extend_from_slice(&RawTar::new().file("smuggled", b"x").finish());
    assert_rejected(&gz(&inner), RejectReason::TrailingData, None);
    // Zero padding is normal.
    let mut padded = tar;
    padded.extend(std::iter::repeat_n(0u8, 20 * 512));
    validate(&gz(&padded), &ExtractPolicy::default()).unwrap();
}

#[test]
fn declared_size_and_digest() {
    let good = gz(&ok_file().finish());
    let policy = ExtractPolicy::default();
    let right = ArchiveDescriptor {
        size_bytes: good.len() as u64,
        sha256: Sha256Digest::of(&good),
    };
    let summary = archive::validate_verified(&good[..], &right, &policy, &mut |_| {}).unwrap();
    assert_eq!(summary.sha256_digest(), right.sha256);
    assert_eq!(summary.compressed_bytes, good.len() as u64);

    let check = |expected: &ArchiveDescriptor, reason: RejectReason| {
        let e = archive::validate_verified(&good[..], expected, &policy, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, Error::ArchiveRejected { reason: r, .. } if r == reason),
            "{e}"
        );
        let sb = Sandbox::new();
        let e = archive::extract_verified(&good[..], &sb.dest(), expected, &policy, &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(e, Error::ArchiveRejected { reason: r, .. } if r == reason),
            "{e}"
        );
        sb.assert_untouched();
    };
    check(
        &ArchiveDescriptor {
            size_bytes: good.len() as u64 - 1,
            sha256: right.sha256.clone(),
        },
        RejectReason::SizeMismatch,
    );
    check(
        &ArchiveDescriptor {
            size_bytes: good.len() as u64 + 1,
            sha256: right.sha256.clone(),
        },
        RejectReason::SizeMismatch,
    );
    check(
        &ArchiveDescriptor {
            size_bytes: good.len() as u64,
            sha256: Sha256Digest::of(b"something else"),
        },
        RejectReason::DigestMismatch,
    );
}

#[test]
fn destination_must_not_exist() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.dest()).unwrap();
    let e = extract(
        &gz(&ok_file().finish()),
        &sb.dest(),
        &ExtractPolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(std::fs::read_dir(sb.dest()).unwrap().count(), 0);
}

#[test]
fn read_errors_of_the_source_are_io_errors() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("network down"))
        }
    }
    let sb = Sandbox::new();
    let e =
        archive::extract(Failing, &sb.dest(), &ExtractPolicy::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    sb.assert_untouched();
}
