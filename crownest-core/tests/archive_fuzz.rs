//! Property tests of the extractor on arbitrary and mutated archives: it never panics,
//! never writes outside the destination, leaves nothing behind on error, and `validate`
//! agrees with `extract`. `CROWNEST_FUZZ_CASES` sets the number of cases per property
//! (default 256), so CI can run it for a bounded time and a long soak can run millions.
#![allow(clippy::unwrap_used)]

mod archive_common;

use archive_common::*;
use crownest_core::archive::ExtractPolicy;
use crownest_core::{Error, RejectReason};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CROWNEST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn policy() -> ExtractPolicy {
    ExtractPolicy {
        max_entries: 64,
        max_total_bytes: 1 << 20,
        max_entry_bytes: 1 << 19,
        max_path_len: 200,
        max_depth: 8,
        max_path_bytes: 4096,
        max_metadata_bytes: 4096,
        max_ratio: 200,
        ratio_grace_bytes: 1 << 20,
    }
}

/// A small valid tar exercising every accepted kind, as the seed for mutations.
fn seed() -> Vec<u8> {
    RawTar::new()
        .dir("./")
        .dir("src/")
        .file("src/a.txt", b"hello world\n")
        .entry(
            raw_header(b"src/run.sh", b'0', 9, b"", 0o4755),
            b"#!/bin/sh",
        )
        .symlink("src/link", "a.txt")
        .symlink("src/up", "../deep")
        .hardlink("hard", "src/a.txt")
        .pax(&[("path", "p".repeat(150).as_bytes())])
        .file("ignored", b"pax named")
        .file("deep/er/file", &[b'x'; 700])
        .finish()
}

fn reason(r: &Result<crownest_core::archive::ExtractSummary, Error>) -> Option<RejectReason> {
    match r {
        Ok(_) => None,
        Err(Error::ArchiveRejected { reason, .. }) => Some(*reason),
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

/// Runs both passes on `gz` and checks the invariants.
fn check(gz: &[u8]) {
    let policy = policy();
    let v = validate(gz, &policy);
    let sb = Sandbox::new();
    let e = extract(gz, &sb.dest(), &policy);
    // Never anything outside dest (the sentinels are untouched, no staging dir is left).
    sb.assert_only_dest();
    match &e {
        Ok(_) => assert!(sb.dest().is_dir()),
        Err(_) => {
            assert!(!sb.dest().exists(), "dest left behind after {e:?}");
            sb.assert_untouched();
        }
    }
    assert_eq!(reason(&v), reason(&e), "validate {v:?} vs extract {e:?}");
    if let (Ok(v), Ok(e)) = (&v, &e) {
        assert_eq!(v, e);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(mut data: Vec<u8>, muts: &[Mutation], header_bias: bool) -> Vec<u8> {
    for m in muts {
        if data.is_empty() {
            break;
        }
        let len = data.len();
        let pos = |at: usize| {
            let i = if header_bias {
                // Aim mutations at the first bytes of 512-byte blocks (names, modes, sizes,
                // type flags), where the parser's decisions are.
                let blocks = (len / 512).max(1);
                (at % blocks) * 512 + (at / blocks) % 512
            } else {
                at
            };
            i % len
        };
        match m {
            Mutation::Flip { at, xor } => {
                let i = pos(*at);
                data[i] ^= xor;
            }
            Mutation::Set { at, byte } => {
                let i = pos(*at);
                data[i] = *byte;
            }
            Mutation::Truncate { at } => {
                let i = pos(*at);
                data.truncate(i);
            }
            Mutation::Insert { at, bytes } => {
                let i = pos(*at);
                data.splice(i..i, bytes.iter().copied());
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(&data);
    }

    #[test]
    fn arbitrary_bytes_gzipped(data in prop::collection::vec(any::<u8>(), 0..8192)) {
        check(&gz(&data));
    }

    #[test]
    fn mutated_tar_inside_valid_gzip(muts in prop::collection::vec(mutation(), 1..6), fix in any::<bool>()) {
        let mut tar = apply(seed(), &muts, true);
        if fix {
            // Repair header checksums so the mutation reaches the policy, not just the
            // checksum check.
            for block in tar.chunks_exact_mut(512) {
                let b: &mut [u8; 512] = block.try_into().unwrap();
                if b.iter().any(|x| *x != 0) && b[257..262] == *b"ustar" {
                    fix_checksum(b);
                }
            }
        }
        check(&gz(&tar));
    }

    #[test]
    fn mutated_gzip(muts in prop::collection::vec(mutation(), 1..4)) {
        check(&apply(gz(&seed()), &muts, false));
    }
}

#[test]
fn the_seed_is_valid() {
    let sb = Sandbox::new();
    extract(&gz(&seed()), &sb.dest(), &policy()).unwrap();
    sb.assert_only_dest();
}
