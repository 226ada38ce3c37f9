//! What a person sees on a terminal: `crownest run` under a real pseudo-terminal
//! (util-linux `script`), checking that progress bars are drawn with a rate and an ETA and
//! cleared before the command's output, and that hints and errors are printed once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Runs `crownest ARGS` on a pty; everything the terminal received, and the exit code.
fn on_a_terminal(home: &Path, args: &[&str]) -> (String, Option<i32>) {
    let bin = assert_cmd::cargo::cargo_bin("crownest");
    let mut line = format!("{} --home {}", bin.display(), home.display());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .env_remove("CROWNEST_HOME")
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "120")
        .output()
        .expect("util-linux `script` runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn progress_hints_and_errors_look_right_on_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    // Enough incompressible bytes that packing and uploading take a few bar ticks.
    let mut data = vec![0u8; 48 * 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(src.path().join("blob.bin"), &data).unwrap();
    std::fs::write(src.path().join("hello.txt"), "hello from the workspace\n").unwrap();
    let dir = src.path().to_str().unwrap();
    let (screen, code) = on_a_terminal(home.path(), &["run", dir, "--", "cat", "hello.txt"]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("ETA"),
        "a bar with an ETA was drawn: {screen:?}"
    );
    assert!(
        screen.contains("MiB/s") || screen.contains("KiB/s") || screen.contains("GiB/s"),
        "with a rate: {screen:?}"
    );
    // The command's output arrives on its own line, after the bars were cleared.
    let after_bars = screen.rsplit("ETA").next().unwrap();
    assert!(
        after_bars.contains("hello from the workspace"),
        "{screen:?}"
    );
    assert_eq!(screen.matches("succeeded").count(), 1, "{screen:?}");
    assert!(screen.contains("evidence: crownest --home"), "{screen:?}");

    // A refused archive: the reason is printed once, and the exit code is 2.
    let bad = src.path().join("bad.tgz");
    std::fs::write(&bad, b"this is not gzip").unwrap();
    let (screen, code) = on_a_terminal(home.path(), &["run", bad.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, Some(2), "{screen}");
    assert_eq!(
        screen.matches("corrupt or truncated archive").count(),
        1,
        "the reason once: {screen:?}"
    );
    assert!(screen.contains("the command was not started"), "{screen:?}");
    // The bar is erased (ESC [2K) before the error is printed, not left half-drawn.
    let error_at = screen.find("crownest: error").unwrap();
    assert!(
        !screen[error_at..].contains(" uploading ["),
        "no bar after the error: {screen:?}"
    );
}
