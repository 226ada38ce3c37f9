//! Stamps the binary with the commit it was built from and the build date, for
//! `crownest --version` (`crownest 0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-06)`).
//! Outside a git checkout (a source tarball) the commit is "unknown". `SOURCE_DATE_EPOCH`
//! (reproducible builds) sets the date; otherwise it is the UTC date of the build.
//! A release link also gets the symbol order ([`symbol_order`]).

use std::process::Command;

/// What `program args` prints, trimmed, when it runs and succeeds with some output.
fn stdout_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn git(args: &[&str]) -> Option<String> {
    stdout_of("git", args)
}

/// `$RUSTC args` (the compiler cargo builds this crate with).
fn rustc(args: &[&str]) -> Option<String> {
    stdout_of(&std::env::var("RUSTC").ok()?, args)
}

/// Days since 1970-01-01 → `YYYY-MM-DD` (proleptic Gregorian, Howard Hinnant's algorithm).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The rustc minor version (`rustc 1.95.0 (...)` -> 95).
fn rustc_minor() -> Option<u32> {
    let text = rustc(&["-V"])?;
    let mut parts = text.split_whitespace().nth(1)?.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// Whether this toolchain ships the lld it links `target` with by default (`gcc-ld/ld.lld`
/// in its sysroot): a distribution's rustc may come without it and link with the system's
/// `ld`, which does not know `--symbol-ordering-file`.
fn ships_lld(target: &str) -> bool {
    rustc(&["--print", "sysroot"]).is_some_and(|sysroot| {
        std::path::Path::new(&sysroot)
            .join("lib/rustlib")
            .join(target)
            .join("bin/gcc-ld/ld.lld")
            .is_file()
    })
}

/// Whether the release link of the binaries uses `symbol-order.txt` (lld's
/// `--symbol-ordering-file`): the functions a short command runs are placed together, so
/// starting one faults in far fewer pages of code (`scripts/gen-symbol-order.sh`,
/// docs/benchmarks.md, "Fourteenth pass"). Only where the linker is known to be lld:
/// x86_64 Linux GNU with rustc 1.90 or later (which links with its own lld by default), a
/// toolchain that ships that lld, and no linker chosen by configuration;
/// `CROWNEST_NO_SYMBOL_ORDER=1` turns it off.
fn symbol_order() {
    println!("cargo:rerun-if-env-changed=CROWNEST_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-changed=symbol-order.txt");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    // Any flag naming a linker turns the order off (conservatively: `-C linker-plugin-lto`
    // too), and so does a linker set in cargo's configuration (`RUSTC_LINKER`).
    let chosen_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "fuse-ld", "link-self-contained"]
            .iter()
            .any(|f| flags.contains(f));
    let target = var("TARGET");
    let wanted = var("PROFILE") == "release"
        && target == "x86_64-unknown-linux-gnu"
        && std::env::var_os("CROWNEST_NO_SYMBOL_ORDER").is_none()
        && !chosen_linker
        && rustc_minor().is_some_and(|m| m >= 90)
        && ships_lld(&target);
    let file = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if wanted && file.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            file.display()
        );
        // Names the list has and this build does not (a stale list) are skipped quietly.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

fn main() {
    symbol_order();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=CROWNEST_COMMIT={commit}");
    println!(
        "cargo:rustc-env=CROWNEST_BUILD_DATE={}",
        civil_date(secs.div_euclid(86_400))
    );
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit re-stamps the binary; other edits do not re-run this script.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
}
