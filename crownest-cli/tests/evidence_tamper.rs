//! Evidence v2 against an editor of the store: each field of a stored Evidence Bundle is
//! edited in the SQLite database, one at a time, and `crownest verify` must fail naming it;
//! the untouched bundle, its export and its signed envelope verify.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

fn crownest(home: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("crownest"));
    c.env_remove("CROWNEST_HOME")
        .arg("--home")
        .arg(home)
        .timeout(Duration::from_secs(120));
    c
}

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

/// A succeeded run with env, labels (one key outside the BMP) and an artifact; its id.
fn finished_run(home: &Path) -> String {
    let out = crownest(home)
        .args(["run", "--json", "--env", "CI=true", "--label", "team=core"])
        .arg("--label")
        .arg("\u{1F600}key=grin")
        .args(["--artifact", "out/result.json"])
        .arg(sample_repo())
        .args(["--", "python3", "main.py"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .expect("an event line"),
    )
    .unwrap();
    first["runId"].as_str().unwrap().to_owned()
}

fn db(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join("store").join("crownest.db")).unwrap()
}

#[test]
fn each_edited_field_fails_verify_naming_it() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let run = finished_run(home);
    crownest(home)
        .args(["verify", &run])
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "crownest.evidence/v2: every field bound",
        ));

    let original: String = db(home)
        .query_row(
            "SELECT bundle FROM evidence WHERE run_id = ?1",
            [&run],
            |r| r.get(0),
        )
        .unwrap();
    // (JSON path in the stored bundle, new value as JSON, the field `verify` must name)
    let cases = [
        ("$.command[1]", "\"-m pytest\"", "command[1]"),
        ("$.cwd", "\"src\"", "cwd"),
        ("$.env.CI", "\"false\"", "env.CI"),
        ("$.limits.memoryBytes", "1", "limits.memoryBytes"),
        ("$.source.labels.team", "\"evil\"", "source.labels.team"),
        (
            "$.source.sha256",
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
            "source.sha256",
        ),
        (
            "$.template.identity.facts.\"python3.version\"",
            "\"Python 9\"",
            "template.identity.facts.python3.version",
        ),
        (
            "$.isolation.securityBoundary",
            "true",
            "isolation.securityBoundary",
        ),
        (
            "$.artifacts[0].sha256",
            "\"1111111111111111111111111111111111111111111111111111111111111111\"",
            "artifacts[0].sha256",
        ),
        (
            "$.timestamps.commandStarted",
            "\"2020-01-01T00:00:00.000Z\"",
            "timestamps.commandStarted",
        ),
        ("$.sandbox.destroyed", "false", "sandbox.destroyed"),
    ];
    for (path, value, field) in cases {
        let conn = db(home);
        let changed = conn
            .execute(
                "UPDATE evidence SET bundle = json_set(bundle, ?1, json(?2)) WHERE run_id = ?3",
                [path, value, &run],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let edited: String = conn
            .query_row(
                "SELECT bundle FROM evidence WHERE run_id = ?1",
                [&run],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(edited, original, "{path} was edited");
        drop(conn);
        let out = crownest(home).args(["verify", &run]).assert().code(1);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            stderr.contains(&format!("field {field}:")),
            "editing {path} must be reported as field {field}: {stderr}"
        );
        db(home)
            .execute(
                "UPDATE evidence SET bundle = ?1 WHERE run_id = ?2",
                [&original, &run],
            )
            .unwrap();
    }
    crownest(home).args(["verify", &run]).assert().success();
}

#[test]
fn the_export_and_its_stored_envelope_verify_offline() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let run = finished_run(home);
    let out = home.join("export");
    crownest(home)
        .args(["export", &run, "--out"])
        .arg(&out)
        .assert()
        .success();
    for f in [
        "events.jsonl",
        "evidence.json",
        "evidence.dsse.json",
        "host-key.pem",
    ] {
        assert!(out.join(f).is_file(), "{f} exported");
    }
    let pem = std::fs::read_to_string(out.join("host-key.pem")).unwrap();
    let printed = crownest(home)
        .args(["host-key", "--pem"])
        .assert()
        .success();
    assert_eq!(String::from_utf8_lossy(&printed.get_output().stdout), pem);
    // The envelope `evidence --dsse` returns is the one stored in the terminal commit.
    let dsse = crownest(home)
        .args(["evidence", &run, "--dsse"])
        .assert()
        .success();
    let printed: Value = serde_json::from_slice(&dsse.get_output().stdout).unwrap();
    let stored: Value =
        serde_json::from_slice(&std::fs::read(out.join("evidence.dsse.json")).unwrap()).unwrap();
    assert_eq!(printed, stored);
    // Offline, with the PEM key (a file) and with a key of nobody's.
    crownest(home)
        .arg("verify")
        .arg("--evidence")
        .arg(out.join("evidence.json"))
        .arg("--events")
        .arg(out.join("events.jsonl"))
        .arg("--dsse")
        .arg(out.join("evidence.dsse.json"))
        .arg("--public-key")
        .arg(out.join("host-key.pem"))
        .assert()
        .success();
    crownest(home)
        .arg("verify")
        .arg("--evidence")
        .arg(out.join("evidence.json"))
        .arg("--events")
        .arg(out.join("events.jsonl"))
        .arg("--dsse")
        .arg(out.join("evidence.dsse.json"))
        .args(["--public-key", &"ab".repeat(32)])
        .assert()
        .code(predicates::ord::ne(0));
    // An exported event line with an extra member is refused (the typed form would drop it).
    let lines = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    let mut first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    first["note"] = Value::from("added");
    let edited: String = std::iter::once(first.to_string())
        .chain(lines.lines().skip(1).map(str::to_owned))
        .map(|l| l + "\n")
        .collect();
    std::fs::write(home.join("edited.jsonl"), edited).unwrap();
    crownest(home)
        .arg("verify")
        .arg("--evidence")
        .arg(out.join("evidence.json"))
        .arg("--events")
        .arg(home.join("edited.jsonl"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("not its canonical form"));
    // Each artifact's bytes are in the export under its id.
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(out.join("evidence.json")).unwrap()).unwrap();
    let id = bundle["artifacts"][0]["artifactId"].as_str().unwrap();
    let bytes = std::fs::read(out.join("artifacts").join(id)).unwrap();
    assert_eq!(
        bytes.len() as u64,
        bundle["artifacts"][0]["sizeBytes"].as_u64().unwrap()
    );
}
