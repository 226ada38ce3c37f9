//! `extract_bench ARCHIVE.tgz DEST [SHA256]`: CrowNest's one-pass verify + extract (sha256 of
//! the compressed bytes while inflating, writes on a second thread), as timed by
//! `scripts/bench-extract.sh` against `sha256sum && tar -xzf`. Without `SHA256` the digest
//! is printed instead of checked.

use std::path::Path;
use std::process::ExitCode;

use crownest_core::Sha256Digest;
use crownest_core::archive::{self, ExtractPolicy};
use crownest_core::run::ArchiveDescriptor;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: extract_bench ARCHIVE.tgz DEST [SHA256]");
        return ExitCode::from(2);
    }
    let file = match std::fs::File::open(&args[1]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", args[1]);
            return ExitCode::from(2);
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let policy = ExtractPolicy::default();
    let dest = Path::new(&args[2]);
    let result = match args.get(3) {
        Some(sha) => match Sha256Digest::parse(sha) {
            Ok(sha256) => {
                let expected = ArchiveDescriptor {
                    size_bytes: size,
                    sha256,
                };
                archive::extract_verified(file, dest, &expected, &policy, &mut |_| {})
            }
            Err(e) => Err(e),
        },
        None => archive::extract(file, dest, &policy, &mut |_| {}),
    };
    match result {
        Ok(s) => {
            println!(
                "{} entries, {} bytes, sha256 {}",
                s.entries,
                s.bytes,
                s.sha256_digest()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.chain());
            ExitCode::FAILURE
        }
    }
}
