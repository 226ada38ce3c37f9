//! `crownest run --secret K` / `--secret-file K=PATH` against `--env K=V`, end to end with the
//! process backend and the SQLite store in a temp home: what the command gets, what is
//! masked, and what is stored (down to the raw bytes of the store's files). Also: evidence
//! bundles written before secrets existed (`crownest.evidence/v1`) keep verifying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

/// `crownest --home <home>`, with nothing inherited from the caller's CROWNEST_* variables.
fn crownest(home: &Path) -> Command {
    let mut c = Command::cargo_bin("crownest").unwrap();
    for v in ["CROWNEST_HOME", "CROWNEST_SERVER", "CROWNEST_TOKEN"] {
        c.env_remove(v);
    }
    c.arg("--home").arg(home).timeout(Duration::from_secs(120));
    c
}

/// A one-file source directory.
fn source() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    dir
}

fn py(code: &str) -> [&str; 3] {
    ["python3", "-c", code]
}

/// Runs with `--json`; returns the run id and the stdout the command wrote.
fn json_run(cmd: &mut Command) -> (String, String) {
    let out = cmd.assert().code(0).get_output().stdout.clone();
    let events: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stdout = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    (events[0]["runId"].as_str().unwrap().to_owned(), stdout)
}

fn output_of(home: &Path, args: &[&str]) -> String {
    let out = crownest(home)
        .args(args)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

/// Every file under `dir` (the SQLite database, its WAL and SHM, the blob directory).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_secret_from_the_environment_reaches_the_command_masked_and_is_stored_nowhere() {
    let home = tempfile::tempdir().unwrap();
    let src = source();
    let secret = "cli-S3cret-Zq9x";
    let code = "import os\nv = os.environ['CN_TOKEN']\nprint(v)\nprint(v[::-1])\n\
                print('ci=' + os.environ['CI'])\nprint('true')\nprint(os.environ['CN_PLAIN'])";
    let (run, stdout) = json_run(
        crownest(home.path())
            .env("CN_TOKEN", secret)
            .arg("run")
            .arg(src.path())
            .args(["--json", "--secret", "CN_TOKEN", "--env", "CI=true"])
            .args(["--env", "CN_PLAIN=plain-marker-77", "--"])
            .args(py(code)),
    );
    let reversed: String = secret.chars().rev().collect();
    assert_eq!(
        stdout,
        format!("***\n{reversed}\nci=true\ntrue\nplain-marker-77\n"),
        "the echo is masked (a reversed one is not: an accidental-echo guard only); \
         plain values never are"
    );

    let show = output_of(home.path(), &["show", &run]);
    let evidence = output_of(home.path(), &["evidence", &run]);
    let in_toto = output_of(home.path(), &["evidence", &run, "--in-toto"]);
    let events = output_of(home.path(), &["events", &run]);
    let runs = output_of(home.path(), &["runs", "--json"]);
    for (what, text) in [
        ("show", &show),
        ("evidence", &evidence),
        ("in-toto", &in_toto),
        ("events", &events),
        ("runs", &runs),
    ] {
        assert!(!text.contains(secret), "`crownest {what}` shows the secret");
    }
    let record: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(record["secretNames"], serde_json::json!(["CN_TOKEN"]));
    assert_eq!(record["spec"]["env"]["CI"], "true");
    let bundle: Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(bundle["schema"], "crownest.evidence/v2");
    assert_eq!(bundle["secretNames"], serde_json::json!(["CN_TOKEN"]));
    assert_eq!(bundle["env"]["CN_PLAIN"], "plain-marker-77");
    assert!(bundle.get("envSalt").is_none(), "no salted hashes any more");
    crownest(home.path())
        .args(["verify", &run])
        .assert()
        .code(0);

    // The raw bytes of every file of the store: the database, its WAL, the blobs.
    let mut files = Vec::new();
    files_under(home.path(), &mut files);
    let mut plain_found = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{} holds the secret",
            f.display()
        );
        plain_found |= contains(&bytes, b"plain-marker-77");
    }
    assert!(
        plain_found,
        "the plain value is stored (so the search reads the store): {files:?}"
    );
}

#[test]
fn a_secret_file_gives_its_content_with_one_trailing_newline_stripped() {
    let home = tempfile::tempdir().unwrap();
    let src = source();
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    std::fs::write(&one, "file-S3cret-k2\n").unwrap();
    std::fs::write(&two, "x\n\n").unwrap();
    let code = "import os\nprint(os.environ['KEY'])\nprint(repr(os.environ['TWO'])[::-1])";
    let (run, stdout) = json_run(
        crownest(home.path())
            .arg("run")
            .arg(src.path())
            .arg("--json")
            .arg("--secret-file")
            .arg(format!("KEY={}", one.display()))
            .arg("--secret-file")
            .arg(format!("TWO={}", two.display()))
            .arg("--")
            .args(py(code)),
    );
    // `'x\n'` reversed: only the last newline of the file was stripped.
    assert_eq!(stdout, "***\n'n\\x'\n");
    let show = output_of(home.path(), &["show", &run]);
    assert!(!show.contains("file-S3cret-k2"));
    let record: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(record["secretNames"], serde_json::json!(["KEY", "TWO"]));
}

#[test]
fn secret_usage_errors_exit_2_and_never_echo_a_value() {
    let home = tempfile::tempdir().unwrap();
    let src = source();
    let run = |args: &[&str]| {
        let out = crownest(home.path())
            .env_remove("CN_UNSET_SECRET")
            .env("CN_SET", "set-value-1")
            .arg("run")
            .arg(src.path())
            .args(args)
            .args(["--", "true"])
            .assert()
            .code(2)
            .get_output()
            .clone();
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["--secret", "CN_UNSET_SECRET"]);
    assert!(err.contains("CN_UNSET_SECRET is not set"), "{err}");
    let err = run(&["--secret", "CN_K=argv-value-9"]);
    assert!(err.contains("not a value"), "{err}");
    assert!(!err.contains("argv-value-9"), "{err}");
    let err = run(&["--secret-file", "CN_K=/nonexistent/secret"]);
    assert!(err.contains("--secret-file CN_K"), "{err}");
    let err = run(&["--secret-file", "CN_K"]);
    assert!(err.contains("K=PATH"), "{err}");
    let err = run(&["--env", "CN_SET=plain", "--secret", "CN_SET"]);
    assert!(
        err.contains("both a plain env variable and a secret"),
        "{err}"
    );
    assert!(!err.contains("set-value-1"), "{err}");
    let err = run(&["--secret", "CN_SET", "--secret", "CN_SET"]);
    assert!(err.contains("given twice"), "{err}");
    // Nothing was started.
    let runs = output_of(home.path(), &["runs", "--json"]);
    assert!(!runs.contains("succeeded"), "{runs}");
}

#[test]
fn evidence_v1_bundles_written_before_keep_verifying_with_their_signature() {
    // Written by the previous version (`envNames` with salted hashes, `envSalt`), exported
    // with `crownest evidence RUN`, `events RUN` and `evidence RUN --dsse`.
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crownest-core/tests/golden/evidence-v1");
    let public_key = std::fs::read_to_string(dir.join("public-key.hex")).unwrap();
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("verify")
        .arg("--evidence")
        .arg(dir.join("evidence.json"))
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .arg("--dsse")
        .arg(dir.join("envelope.json"))
        .args(["--public-key", public_key.trim()])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("over this bundle's in-toto view"));
}
