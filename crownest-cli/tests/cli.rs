//! The `crownest` binary end to end: real processes (process backend), the SQLite store in a
//! temp `--home` per test, and a second `crownest` process where a test needs one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("crownest")
}

/// `crownest --home <home>`, with nothing inherited from the caller's CROWNEST_HOME.
fn crownest(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("CROWNEST_HOME")
        .arg("--home")
        .arg(home)
        .timeout(Duration::from_secs(120));
    c
}

fn std_crownest(home: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.env_remove("CROWNEST_HOME").arg("--home").arg(home);
    c
}

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A .tar.gz with one file whose name is written raw into the header (the tar crate refuses
/// to build hostile names itself).
fn tar_gz_raw_name(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    header.set_cksum();
    let mut tar = Vec::new();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Starts `crownest run --json ...` in the background and returns the child, its stdout
/// reader, and the run id (read from the first event).
fn spawn_json_run(
    home: &Path,
    source: &Path,
    command: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>, String) {
    let mut child = std_crownest(home)
        .arg("run")
        .arg(source)
        .arg("--json")
        .arg("--")
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    let run = first["runId"].as_str().unwrap().to_owned();
    (child, out, run)
}

/// Reads JSON lines until an event matches.
fn read_until(
    out: &mut BufReader<std::process::ChildStdout>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for an event");
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "stream ended before the event"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        if pred(&v) {
            return v;
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not end in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_on_the_sample_directory_succeeds_with_output_and_an_artifact() {
    let home = tempfile::tempdir().unwrap();
    let assert = crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--artifact", "out/result.json", "--", "python3", "main.py"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("read 8 numbers, sum 31"))
        .stderr(predicate::str::contains("succeeded, exit code 0"))
        .stderr(predicate::str::contains("artifact out/result.json"))
        // The hint repeats the --home given, so it works when copied.
        .stderr(predicate::str::contains(format!(
            "crownest --home {} evidence run_",
            home.path().display()
        )));
    // Nothing but the command's output on stdout when piped (no progress, no summary).
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    assert!(
        !stdout.contains("crownest:") && !stdout.contains("succeeded"),
        "{stdout}"
    );
    crownest(home.path())
        .args(["run"])
        .arg(sample_repo())
        .args(["--", "node", "main.js"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("sum of 8 numbers: 31"));
}

#[test]
fn a_directory_packs_to_the_same_archive_every_time() {
    let home = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for _ in 0..2 {
        let out = crownest(home.path())
            .arg("run")
            .arg(sample_repo())
            .args(["--json", "--", "true"])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let run = json_lines(&out)[0]["runId"].as_str().unwrap().to_owned();
        let ev = crownest(home.path())
            .args(["evidence", &run])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let ev: Value = serde_json::from_slice(&ev).unwrap();
        digests.push(ev["source"]["sha256"].as_str().unwrap().to_owned());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn a_tgz_file_runs_and_stdout_and_stderr_stay_apart() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("src.tgz");
    std::fs::write(&tgz, tar_gz(&[("hello.txt", b"hi there\n")])).unwrap();
    crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .args(["--", "sh", "-c", "cat hello.txt; echo to-stderr >&2"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("hi there").and(predicate::str::contains("to-stderr").not()),
        )
        .stderr(predicate::str::contains("to-stderr"));
}

#[test]
fn a_failing_command_exits_1_with_its_failure() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "sh", "-c", "echo oops >&2; exit 3"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("oops"))
        .stderr(predicate::str::contains("exit code 3"))
        .stderr(predicate::str::contains("exit_nonzero"));
}

#[test]
fn a_missing_required_artifact_and_a_timeout_fail_with_exit_1() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--required-artifact", "nope.txt", "--", "true"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing_required_artifact"));
    // Killed (no exit code) if it waited for the 30 s sleep instead of its 1 s deadline.
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--timeout", "1s", "--", "sleep", "30"])
        .timeout(Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("timed_out"));
}

#[test]
fn a_hostile_archive_is_rejected_with_exit_2_and_never_runs() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("evil.tar.gz");
    std::fs::write(&tgz, tar_gz_raw_name("../evil", b"pwned")).unwrap();
    let marker = dir.path().join("ran");
    let out = crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .arg("--json")
        .arg("--")
        .args(["touch", marker.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("../evil"))
        .stderr(predicate::str::contains("parent_traversal"))
        .get_output()
        .stdout
        .clone();
    assert!(!marker.exists(), "the command must never start");
    assert!(!dir.path().join("evil").exists());
    let events = json_lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "error" && e["code"] == "archive_rejected")
    );
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "status" && e["status"] == "running")
    );
    assert_eq!(events.last().unwrap()["type"], "terminal");
}

#[test]
fn a_digest_mismatch_is_rejected_with_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("src.tgz");
    let bytes = tar_gz(&[("a.txt", b"a")]);
    std::fs::write(&tgz, &bytes).unwrap();
    let wrong = sha256_hex(b"not these bytes");
    crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .args([
            "--sha256",
            &wrong,
            "--size-bytes",
            &bytes.len().to_string(),
            "--",
            "true",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("digest_mismatch"));
    // The right declaration passes.
    crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .args([
            "--sha256",
            &sha256_hex(&bytes),
            "--size-bytes",
            &bytes.len().to_string(),
            "--",
            "cat",
            "a.txt",
        ])
        .assert()
        .code(0)
        .stdout("a");
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    // No command.
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .assert()
        .code(2);
    // --sha256 without --size-bytes.
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--sha256", "00", "--", "true"])
        .assert()
        .code(2);
    crownest(home.path()).arg("frobnicate").assert().code(2);
    crownest(home.path())
        .args(["run", "/no/such/source", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/no/such/source"));
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--artifact", "../escape", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("artifacts[0].path"));
    crownest(home.path())
        .args(["show", "run_doesnotexist"])
        .assert()
        .code(2);
    crownest(home.path())
        .args(["show", "not-a-run-id"])
        .assert()
        .code(2);
}

#[test]
fn json_output_is_json_lines_ending_with_the_terminal_event() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .env("SECRET_TOKEN", "hunter2-value")
        .arg("run")
        .arg(sample_repo())
        .args([
            "--json",
            "--secret",
            "SECRET_TOKEN",
            "--",
            "sh",
            "-c",
            "echo hello",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        !text.contains("hunter2-value"),
        "secret values never appear in events"
    );
    let events = json_lines(&out);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1));
        assert!(e["hash"].as_str().is_some());
    }
    let last = events.last().unwrap();
    assert_eq!(last["type"], "terminal");
    assert_eq!(last["status"], "succeeded");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == "hello\n")
    );
    let run = last["runId"].as_str().unwrap();
    let ev = crownest(home.path())
        .args(["evidence", run])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert!(!String::from_utf8_lossy(&ev).contains("hunter2-value"));
    assert!(String::from_utf8_lossy(&ev).contains("SECRET_TOKEN"));
}

#[test]
fn cancel_from_another_process_ends_the_run_with_130() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, mut out, run) = spawn_json_run(home.path(), &sample_repo(), &["sleep", "60"]);
    read_until(&mut out, |e| {
        e["type"] == "status" && e["status"] == "running"
    });
    // Another process sees it running...
    crownest(home.path())
        .args(["runs", "--status", "running"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(run.as_str()));
    // ...and cancels it.
    crownest(home.path())
        .args(["cancel", &run])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("cancel requested"));
    let terminal = read_until(&mut out, |e| e["type"] == "terminal");
    assert_eq!(terminal["status"], "canceled");
    // At most 30 s, half the command's sleep: the cancel ended it.
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    crownest(home.path())
        .args(["show", &run])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("\"status\": \"canceled\""));
    // Canceling an ended run is refused.
    crownest(home.path())
        .args(["cancel", &run])
        .assert()
        .code(2);
}

#[test]
fn ctrl_c_cancels_the_run_and_exits_130() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, mut out, _run) = spawn_json_run(home.path(), &sample_repo(), &["sleep", "60"]);
    read_until(&mut out, |e| {
        e["type"] == "status" && e["status"] == "running"
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let terminal = read_until(&mut out, |e| e["type"] == "terminal");
    assert_eq!(terminal["status"], "canceled");
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(30)).code(),
        Some(130)
    );
}

#[test]
fn events_follow_in_a_second_process_sees_the_run_live_to_its_end() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, mut out, run) = spawn_json_run(
        home.path(),
        &sample_repo(),
        &["sh", "-c", "echo one; sleep 1.5; echo two"],
    );
    read_until(&mut out, |e| e["type"] == "stdout");
    let follower = std_crownest(home.path())
        .args(["events", &run, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = follower.wait_with_output().unwrap();
    assert_eq!(followed.status.code(), Some(0));
    let events = json_lines(&followed.stdout);
    assert_eq!(events.first().unwrap()["seq"], 1);
    assert_eq!(events.last().unwrap()["type"], "terminal");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "one\ntwo\n");
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(30)).code(),
        Some(0)
    );
    // Paging without --follow.
    let page = crownest(home.path())
        .args(["events", &run, "--after-seq", "2", "--limit", "3"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let page = json_lines(&page);
    assert_eq!(
        page.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
}

/// Runs the sample with its artifact and returns the run id.
fn sample_run(home: &Path) -> String {
    let out = crownest(home)
        .arg("run")
        .arg(sample_repo())
        .args([
            "--json",
            "--artifact",
            "out/result.json",
            "--artifact",
            "out",
            "--",
            "python3",
            "main.py",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    json_lines(&out)[0]["runId"].as_str().unwrap().to_owned()
}

#[test]
fn verify_passes_on_stored_and_exported_records_and_catches_tampering() {
    let home = tempfile::tempdir().unwrap();
    let run = sample_run(home.path());
    crownest(home.path())
        .args(["verify", &run])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("2 blob(s) re-hashed"));

    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("e.json");
    let events = dir.path().join("ev.jsonl");
    let e = crownest(home.path())
        .args(["evidence", &run])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(&evidence, &e).unwrap();
    let ev = crownest(home.path())
        .args(["events", &run])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(&events, &ev).unwrap();
    let verify_files = |evidence: &Path, events: &Path| {
        let mut c = crownest(home.path());
        c.arg("verify")
            .arg("--evidence")
            .arg(evidence)
            .arg("--events")
            .arg(events);
        c
    };
    verify_files(&evidence, &events)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("ok: run"));

    let lines: Vec<String> = String::from_utf8(ev)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let write_events = |lines: &[String]| {
        let p = dir.path().join("tampered.jsonl");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    // An edited event.
    let mut edited = lines.clone();
    let i = edited
        .iter()
        .position(|l| l.contains("read 8 numbers"))
        .unwrap();
    edited[i] = edited[i].replace("sum 31", "sum 32");
    verify_files(&evidence, &write_events(&edited))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("hash"));
    // A dropped event.
    let mut dropped = lines.clone();
    dropped.remove(2);
    verify_files(&evidence, &write_events(&dropped))
        .assert()
        .code(1);
    // Two events swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    verify_files(&evidence, &write_events(&swapped))
        .assert()
        .code(1);
    // The last event dropped (count and head no longer match).
    verify_files(&evidence, &write_events(&lines[..lines.len() - 1]))
        .assert()
        .code(1);
    // A wrong artifact digest in the evidence.
    let mut bundle: Value = serde_json::from_slice(&e).unwrap();
    bundle["artifacts"][0]["sha256"] = Value::String(sha256_hex(b"forged"));
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, serde_json::to_vec(&bundle).unwrap()).unwrap();
    verify_files(&forged, &events)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("artifact out/result.json"));
    // Not an evidence bundle at all: a usage error.
    verify_files(&events, &events).assert().code(2);
}

#[test]
fn verify_rehashes_stored_artifact_blobs() {
    let home = tempfile::tempdir().unwrap();
    let run = sample_run(home.path());
    let e = crownest(home.path())
        .args(["evidence", &run])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let bundle: Value = serde_json::from_slice(&e).unwrap();
    let sha = bundle["artifacts"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    // The store keeps blobs content-addressed at blobs/<2 hex>/<62 hex>: corrupt this one.
    let blob = home
        .path()
        .join("store/blobs")
        .join(&sha[..2])
        .join(&sha[2..]);
    assert!(blob.is_file(), "{}", blob.display());
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, b"{\"tampered\": true}\n").unwrap();
    crownest(home.path())
        .args(["verify", &run])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("stored blob"));
}

#[test]
fn artifacts_out_writes_files_and_directories_and_never_follows_symlinks() {
    let home = tempfile::tempdir().unwrap();
    let run = sample_run(home.path());
    let out = tempfile::tempdir().unwrap();
    crownest(home.path())
        .args(["artifacts", &run, "--out"])
        .arg(out.path())
        .assert()
        .code(0);
    let result: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("out/result.json")).unwrap())
            .unwrap();
    assert_eq!(result["sum"], 31);

    // A symlink planted where the artifact's directory goes is refused, not followed.
    let planted = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), planted.path().join("out")).unwrap();
    crownest(home.path())
        .args(["artifacts", &run, "--out"])
        .arg(planted.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refusing to follow"));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn doctor_reports_backends_and_templates() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("doctor")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("backend process: usable"))
        .stdout(predicate::str::contains("template python-node: available"))
        .stdout(predicate::str::contains("python3.path"));
    // The process backend's python3 version, not just its path.
    let text =
        String::from_utf8_lossy(&crownest(home.path()).arg("doctor").output().unwrap().stdout)
            .into_owned();
    let process: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("backend process:"))
        .skip(1)
        .take_while(|l| !l.starts_with("backend "))
        .collect();
    let version = process
        .iter()
        .find_map(|l| l.trim().strip_prefix("python3.version = "))
        .unwrap_or_else(|| panic!("a python3 version in the process section: {text}"));
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("{version}"));
    let parts: Vec<u32> = number
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{version}")))
        .collect();
    assert!(
        parts.len() >= 2 && parts[0] == 3,
        "a Python 3 version like 3.11.7: {version}"
    );
    let json = crownest(home.path())
        .args(["doctor", "--json"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let report: Value = serde_json::from_slice(&json).unwrap();
    let backends = report["backends"].as_array().unwrap();
    let process = backends.iter().find(|b| b["name"] == "process").unwrap();
    assert_eq!(process["usable"], true);
    assert_eq!(process["capabilities"]["securityBoundary"], false);
    // Every backend of the build is listed, usable or with a reason.
    for b in backends {
        assert!(b["usable"] == true || b["reason"].is_string(), "{b}");
    }
    // What CPython on WASI cannot do is said, with the pytest flags that work.
    let wasm = backends.iter().find(|b| b["name"] == "wasm").unwrap();
    let limits = wasm["limitations"].to_string();
    assert!(
        limits.contains("no threads") && limits.contains("--capture=sys"),
        "{limits}"
    );
    assert!(
        String::from_utf8_lossy(&crownest(home.path()).arg("doctor").output().unwrap().stdout)
            .contains("  cannot: no os.dup: pytest needs --capture=sys")
    );
}

#[test]
fn crownest_home_comes_from_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.env("CROWNEST_HOME", home.path())
        .args(["run"])
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .code(0);
    assert!(home.path().join("store").is_dir());
    crownest(home.path())
        .args(["runs", "--json"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("\"succeeded\""));
}

/// A local run streams the archive into the engine in one pass whatever its size (no
/// direct/staged split, no pre-pass to hash it): past the 32 MiB direct-upload limit it is
/// still one `direct` stream, and its digest is the one the store computed.
#[test]
fn a_large_local_archive_streams_in_one_pass() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Incompressible content over the 32 MiB direct-upload limit.
    let mut data = vec![0u8; 33 * 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let tgz = dir.path().join("big.tgz");
    let bytes = tar_gz(&[("big.bin", &data)]);
    assert!(bytes.len() > 32 * 1024 * 1024);
    std::fs::write(&tgz, &bytes).unwrap();
    drop(data);
    let out = crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .args(["--json", "--", "sh", "-c", "wc -c < big.bin"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let events = json_lines(&out);
    let stdout: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stdout.trim(), (33 * 1024 * 1024).to_string());
    let run = events[0]["runId"].as_str().unwrap();
    let ev = crownest(home.path())
        .args(["evidence", run])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let ev: Value = serde_json::from_slice(&ev).unwrap();
    assert_eq!(ev["source"]["upload"], "direct");
    assert_eq!(ev["source"]["sha256"], sha256_hex(&bytes));
}

#[test]
fn evidence_signed_with_the_host_key_verifies_and_tampering_or_another_key_fails() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let home = tempfile::tempdir().unwrap();
    let run = sample_run(home.path());
    let dir = tempfile::tempdir().unwrap();
    let envelope_path = dir.path().join("env.json");
    let out = crownest(home.path())
        .args(["evidence", &run, "--dsse"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(&envelope_path, &out).unwrap();
    let key_file = home.path().join("host-key.ed25519");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "the host key is created private"
    );
    let envelope: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    // An explicit --key must exist: a mistyped path never mints a new key.
    let typo = dir.path().join("no-such.key");
    crownest(home.path())
        .args(["evidence", &run, "--dsse", "--key"])
        .arg(&typo)
        .assert()
        .code(2);
    assert!(!typo.exists());

    // The signature alone, and bound to the stored run's bundle.
    crownest(home.path())
        .arg("verify")
        .arg("--dsse")
        .arg(&envelope_path)
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!(
            // Two artifacts, the stdout log and the bundle itself (stderr was empty).
            "in-toto statement for run {run}, 4 subject(s)"
        )));
    crownest(home.path())
        .args(["verify", &run, "--dsse"])
        .arg(&envelope_path)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("over this bundle's in-toto view"));

    // An edited statement (one subject digest changed) fails the signature.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut statement: Value =
        serde_json::from_slice(&b64.decode(envelope["payload"].as_str().unwrap()).unwrap())
            .unwrap();
    statement["subject"][0]["digest"]["sha256"] = Value::String("0".repeat(64));
    let mut tampered = envelope.clone();
    tampered["payload"] = Value::String(b64.encode(serde_json::to_vec(&statement).unwrap()));
    let tampered_path = dir.path().join("tampered.json");
    std::fs::write(&tampered_path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    crownest(home.path())
        .arg("verify")
        .arg("--dsse")
        .arg(&tampered_path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not match the payload"));

    // Another key (here: another home's) does not vouch for it.
    let other = tempfile::tempdir().unwrap();
    let other_run = sample_run(other.path());
    crownest(other.path())
        .args(["evidence", &other_run, "--dsse"])
        .assert()
        .code(0);
    let other_public = {
        let seed = std::fs::read_to_string(other.path().join("host-key.ed25519")).unwrap();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(seed.trim(), &mut bytes).unwrap();
        crownest_core::signing::HostKey::from_seed(bytes)
            .public_key()
            .to_hex()
    };
    crownest(home.path())
        .arg("verify")
        .arg("--dsse")
        .arg(&envelope_path)
        .args(["--public-key", &other_public])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no signature by key"));

    // A valid signature over another run's statement does not vouch for this bundle.
    crownest(home.path())
        .args(["verify", &other_run, "--dsse"])
        .arg(&envelope_path)
        .assert()
        .code(2); // the other run is not in this home
    let other_evidence = dir.path().join("other-e.json");
    let other_events = dir.path().join("other-ev.jsonl");
    for (cmd, path) in [("evidence", &other_evidence), ("events", &other_events)] {
        let out = crownest(other.path())
            .args([cmd, &other_run])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        std::fs::write(path, out).unwrap();
    }
    crownest(home.path())
        .arg("verify")
        .arg("--evidence")
        .arg(&other_evidence)
        .arg("--events")
        .arg(&other_events)
        .arg("--dsse")
        .arg(&envelope_path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not this bundle's in-toto view"));

    // Not an envelope at all: exit 2.
    crownest(home.path())
        .arg("verify")
        .arg("--dsse")
        .arg(&other_events)
        .assert()
        .code(2);
}

#[test]
fn version_completions_and_man_pages_come_from_the_binary() {
    let home = tempfile::tempdir().unwrap();
    let version = crownest(home.path()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.starts_with("crownest ")
            && version.contains("(commit ")
            && version.contains(", built 20"),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = crownest(home.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("crownest") && script.contains("keep-sandbox"),
            "{shell}"
        );
    }
    let man = crownest(home.path()).arg("man").output().unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).starts_with(".ie"));
    let dir = tempfile::tempdir().unwrap();
    crownest(home.path())
        .args(["man", "--out"])
        .arg(dir.path())
        .assert()
        .code(0);
    let run = std::fs::read_to_string(dir.path().join("crownest-run.1")).unwrap();
    assert!(run.contains("keep\\-sandbox"), "{run}");
    assert!(dir.path().join("crownest.1").is_file());
}
