//! `crownest run`'s flags for what the spec supports, `logs`, and output a person reads:
//! each behaviour through the built binary on the process backend; and a kept Docker
//! sandbox, which needs Docker and the `crownest/python-node` image (fails without them
//! when `CROWNEST_REQUIRE_DOCKER=1`, skipped, said on stderr, otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
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

fn stdout_of(c: &mut Command) -> String {
    String::from_utf8_lossy(&c.assert().get_output().stdout).into_owned()
}

fn newest_run(home: &Path) -> Value {
    let text = stdout_of(crownest(home).args(["runs", "--json"]));
    serde_json::from_str(text.lines().next().expect("a run")).unwrap()
}

#[test]
fn propagate_exit_code_returns_the_commands_own_code() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .args(["run", "--propagate-exit-code"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "exit 7"])
        .assert()
        .code(7);
    // Without the flag a failed run is 1.
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "sh", "-c", "exit 7"])
        .assert()
        .code(1);
    // Killed by a signal: 128 + the signal.
    crownest(home.path())
        .args(["run", "--propagate-exit-code"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "kill -TERM $$"])
        .assert()
        .code(143);
}

#[test]
fn logs_prints_the_raw_bytes_of_each_stream() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "sh", "-c", "printf 'a\\377b'; printf 'warn' >&2"])
        .assert()
        .success();
    let run = newest_run(home.path())["id"].as_str().unwrap().to_owned();
    let out = crownest(home.path())
        .args(["logs", &run])
        .assert()
        .success();
    assert_eq!(
        out.get_output().stdout,
        b"a\xffb",
        "stdout's raw bytes, binary included"
    );
    assert_eq!(out.get_output().stderr, b"warn");
    let only_err = crownest(home.path())
        .args(["logs", &run, "--stderr"])
        .assert()
        .success();
    assert_eq!(only_err.get_output().stdout, b"warn");
    let only_out = crownest(home.path())
        .args(["logs", &run, "--stdout"])
        .assert()
        .success();
    assert_eq!(only_out.get_output().stdout, b"a\xffb");
    assert!(only_out.get_output().stderr.is_empty());
    // --follow on an ended run prints everything and ends.
    let followed = crownest(home.path())
        .args(["logs", &run, "--follow", "--stdout"])
        .assert()
        .success();
    assert_eq!(followed.get_output().stdout, b"a\xffb");
}

#[test]
fn spec_flags_reach_the_run_and_its_evidence() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .args([
            "run",
            "--label",
            "commit=abc",
            "--network",
            "none",
            "--output-limit",
            "1K",
            "--timeout",
            "1h30m",
        ])
        .arg(sample_repo())
        .args(["--", "python3", "main.py"])
        .assert()
        .success();
    let run = newest_run(home.path());
    let id = run["id"].as_str().unwrap();
    let bundle: Value =
        serde_json::from_str(&stdout_of(crownest(home.path()).args(["evidence", id]))).unwrap();
    assert_eq!(bundle["source"]["labels"]["commit"], "abc");
    assert_eq!(bundle["network"], "none");
    assert_eq!(bundle["limits"]["outputBytesPerStream"], 1024);
    // The process backend cannot enforce a memory or pids limit: asking for one is refused
    // before anything runs (exit 2), never silently ignored.
    for flag in [["--memory", "512M"], ["--pids", "100"]] {
        crownest(home.path())
            .arg("run")
            .args(flag)
            .arg(sample_repo())
            .args(["--", "true"])
            .assert()
            .code(2)
            .stderr(
                predicates::str::contains("not_enforceable")
                    .or(predicates::str::contains("cannot enforce")),
            );
    }
    assert_eq!(bundle["limits"]["timeoutMs"], 5_400_000);
    crownest(home.path())
        .args(["run", "--network", "sometimes"])
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .code(2);
}

#[test]
fn an_idempotency_key_never_runs_the_command_twice() {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("count");
    let cmd = format!("echo x >> {}", marker.display());
    for _ in 0..2 {
        crownest(home.path())
            .args(["run", "--idempotency-key", "deploy-42"])
            .arg(sample_repo())
            .args(["--", "sh", "-c", &cmd])
            .assert()
            .success();
    }
    let runs = stdout_of(crownest(home.path()).args(["runs", "--json"]));
    assert_eq!(runs.lines().count(), 1, "one run for one key");
    // The process backend runs on the host: the marker shows how often the command ran.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
}

#[test]
fn detach_prints_the_run_id_and_the_run_goes_on() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--detach"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "sleep 1; echo finished"])
        .assert()
        .success();
    let id = String::from_utf8_lossy(&out.get_output().stdout)
        .trim()
        .to_owned();
    assert!(id.starts_with("run_"), "{id:?}");
    let followed = crownest(home.path())
        .args(["logs", &id, "--follow"])
        .assert()
        .success();
    assert_eq!(followed.get_output().stdout, b"finished\n");
    let record: Value =
        serde_json::from_str(&stdout_of(crownest(home.path()).args(["show", &id]))).unwrap();
    assert_eq!(record["status"], "succeeded");
}

#[test]
fn a_refused_archive_is_reported_once_and_hints_repeat_home() {
    let home = tempfile::tempdir().unwrap();
    let bad = home.path().join("bad.tgz");
    let mut tar = Vec::new();
    {
        let mut header = tar::Header::new_old();
        let name = b"../escape";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(1);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(b"x");
        tar.resize(1024 + 1024, 0);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    std::fs::write(&bad, gz.finish().unwrap()).unwrap();
    let out = crownest(home.path())
        .arg("run")
        .arg(&bad)
        .args(["--", "true"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert_eq!(
        stderr.matches("../escape").count(),
        1,
        "the refusal and its entry are printed once: {stderr}"
    );
    let ok = crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&ok.get_output().stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "crownest --home {} evidence run_",
            home.path().display()
        )),
        "the hint can be copied as is: {stderr}"
    );
}

#[test]
fn the_runs_table_keeps_one_line_per_run() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "sh", "-c", "echo one\necho two"])
        .assert()
        .success();
    let table = stdout_of(crownest(home.path()).arg("runs"));
    assert_eq!(table.lines().count(), 2, "a header and one line: {table}");
    assert!(table.contains("echo one\\necho two"), "{table}");
}

#[test]
fn events_follow_goes_on_after_the_window() {
    let home = tempfile::tempdir().unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .success();
    let run = newest_run(home.path())["id"].as_str().unwrap().to_owned();
    let all = stdout_of(crownest(home.path()).args(["events", &run]));
    let window =
        stdout_of(crownest(home.path()).args(["events", &run, "--after-seq", "1", "--limit", "2"]));
    assert_eq!(window.lines().count(), 2);
    let followed = stdout_of(crownest(home.path()).args([
        "events",
        &run,
        "--after-seq",
        "1",
        "--limit",
        "2",
        "--follow",
    ]));
    assert_eq!(
        followed.lines().count(),
        all.lines().count() - 1,
        "the window, then every later event to the end"
    );
}

#[test]
fn packing_a_directory_leaves_out_what_its_ignore_files_say_and_tells() {
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let d = src.path();
    std::fs::create_dir_all(d.join(".git")).unwrap();
    std::fs::create_dir_all(d.join("node_modules/x")).unwrap();
    std::fs::write(d.join(".git/HEAD"), "ref").unwrap();
    std::fs::write(d.join("node_modules/x/i.js"), "x").unwrap();
    std::fs::write(d.join("app.py"), "print('hi')").unwrap();
    std::fs::write(d.join("local.env"), "TOKEN=1").unwrap();
    std::fs::write(d.join(".gitignore"), "node_modules/\n").unwrap();
    std::fs::write(d.join(".crownestignore"), "*.env\n").unwrap();
    let list = "find . -mindepth 1 | sort | tr '\\n' ' '";
    let out = crownest(home.path())
        .arg("run")
        .arg(d)
        .args(["--", "sh", "-c", list])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "./.crownestignore ./.gitignore ./app.py "
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("left out 3 paths").count(),
        1,
        "said once: {err}"
    );
    assert!(err.contains(".git/, local.env, node_modules/"), "{err}");
    // --no-ignore packs everything and says nothing about it.
    let out = crownest(home.path())
        .args(["run", "--no-ignore"])
        .arg(d)
        .args(["--", "sh", "-c", list])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listed = String::from_utf8_lossy(&out.stdout);
    for p in ["./.git/HEAD", "./local.env", "./node_modules/x/i.js"] {
        assert!(listed.contains(p), "{p} in {listed}");
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("left out"));
}

#[test]
fn an_artifact_missing_at_the_root_but_present_under_cwd_is_named() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--cwd", "data", "--artifact", "out/report.txt"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "mkdir -p out && echo r > out/report.txt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relative to the workspace root")
            && err.contains("\"data/out/report.txt\" exists"),
        "{err}"
    );
    // Without a working directory, or when nothing is there, no hint.
    let out = crownest(home.path())
        .args(["run", "--cwd", "data", "--artifact", "nowhere.txt"])
        .arg(sample_repo())
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nowhere.txt") && !err.contains("exists (ask"),
        "{err}"
    );
}

#[test]
fn a_kept_sandbox_says_where_it_is_and_how_long_it_lives() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--keep-sandbox", "10m"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "echo kept > mark.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("sandbox kept until"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("(for 9m") || line.contains("(for 10m"),
        "{line}"
    );
    let dir = line
        .rsplit_once("backend removes it): ")
        .and_then(|(_, rest)| rest.split(" (the workspace").next())
        .unwrap_or_else(|| panic!("{line}"));
    let mark = Path::new(dir).join("workspace/mark.txt");
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "kept\n", "{line}");
}

#[test]
fn quiet_prints_only_failures_and_color_follows_the_flag_and_no_color() {
    let home = tempfile::tempdir().unwrap();
    // -q: a run that succeeds says nothing on stderr; its output is untouched.
    let out = crownest(home.path())
        .args(["-q", "run"])
        .arg(sample_repo())
        .args(["--", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // -q: a failure is still reported, without the hints.
    let out = crownest(home.path())
        .args(["run", "--quiet"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed, exit code 3"), "{err}");
    assert!(!err.contains("evidence:"), "{err}");
    // --color always paints the status word; never (and NO_COLOR with auto) does not.
    let out = crownest(home.path())
        .args(["--color", "always", "run"])
        .arg(sample_repo())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\u{1b}[1;32msucceeded\u{1b}[0m"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [&["--color", "never"][..], &[][..]] {
        let out = crownest(home.path())
            .env("NO_COLOR", "1")
            .args(args)
            .arg("run")
            .arg(sample_repo())
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("succeeded") && !err.contains('\u{1b}'),
            "{err}"
        );
    }
}

#[test]
fn open_files_and_kill_grace_reach_the_run_and_its_evidence() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--open-files", "256", "--kill-grace", "5s"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "ulimit -n"])
        .assert()
        .success();
    // The process backend sets RLIMIT_NOFILE to it.
    assert_eq!(String::from_utf8_lossy(&out.get_output().stdout), "256\n");
    let run = newest_run(home.path());
    assert_eq!(run["spec"]["limits"]["openFiles"], 256, "{run}");
    assert_eq!(run["spec"]["limits"]["killGraceMs"], 5000, "{run}");
    let id = run["id"].as_str().unwrap();
    let bundle: Value =
        serde_json::from_str(&stdout_of(crownest(home.path()).args(["evidence", id]))).unwrap();
    assert_eq!(bundle["limits"]["openFiles"], 256);
    assert_eq!(bundle["limits"]["killGraceMs"], 5000);
    // Above the engine's maximum: refused before anything runs.
    crownest(home.path())
        .args(["run", "--kill-grace", "2h"])
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("killGraceMs"));
}

/// Messages written over several source lines read as one sentence: no run of spaces
/// where a line continuation was lost.
#[test]
fn messages_have_no_runs_of_spaces() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--secret", "API_TOKEN=abc"])
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("--secret takes a variable name, not a value: export API_TOKEN and pass --secret API_TOKEN, or use --secret-file API_TOKEN=PATH"),
        "{err}"
    );
    assert!(!err.contains("  "), "{err:?}");

    // A run that ended without a signed envelope: the host key could not be loaded then
    // (group-readable), so `evidence --dsse` signs the stored bundle now and says so.
    use std::os::unix::fs::PermissionsExt as _;
    let key = home.path().join("host-key.ed25519");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    crownest(home.path())
        .arg("run")
        .arg(sample_repo())
        .args(["--", "true"])
        .assert()
        .success()
        .stderr(predicate::str::contains("evidence will not be signed"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let id = newest_run(home.path())["id"].as_str().unwrap().to_owned();
    let out = crownest(home.path())
        .args(["evidence", &id, "--dsse"])
        .assert()
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains(&format!(
            "run {id} ended without a signed envelope (no host key then, or an older run); signing the stored bundle now"
        )),
        "{err}"
    );
    assert!(!err.contains("  "), "{err:?}");
}

/// `-q` silences notes: the "exists already" of a retried idempotent run and the detach
/// hint; the run id a detached run prints on stdout stays.
#[test]
fn quiet_silences_the_idempotency_and_detach_notes() {
    let home = tempfile::tempdir().unwrap();
    let run = |quiet: bool| {
        let mut c = crownest(home.path());
        if quiet {
            c.arg("-q");
        }
        let out = c
            .args(["run", "--idempotency-key", "k1"])
            .arg(sample_repo())
            .args(["--", "true"])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    };
    run(false);
    let loud = run(false);
    assert!(
        loud.contains("exists already (same idempotency key)"),
        "{loud}"
    );
    let quiet = run(true);
    assert!(!quiet.contains("exists already"), "{quiet}");

    let detach = |quiet: bool| {
        let mut c = crownest(home.path());
        if quiet {
            c.arg("-q");
        }
        let out = c
            .args(["run", "--detach"])
            .arg(sample_repo())
            .args(["--", "true"])
            .assert()
            .success();
        let o = out.get_output();
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(id.starts_with("run_"), "{id:?}");
        // Let the background run end before the home goes away.
        crownest(home.path())
            .args(["logs", &id, "--follow"])
            .assert()
            .success();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let loud = detach(false);
    assert!(loud.contains("started in the background"), "{loud}");
    let quiet = detach(true);
    assert!(!quiet.contains("started in the background"), "{quiet}");
    assert_eq!(quiet, "", "nothing else either");
}

/// `-v` raises the log level to info (when RUST_LOG is not set): the run's creation is
/// logged on stderr; without it, no log line.
#[test]
fn verbose_shows_info_log_lines() {
    let home = tempfile::tempdir().unwrap();
    let run = |verbose: bool| {
        let mut c = crownest(home.path());
        c.env_remove("RUST_LOG");
        if verbose {
            c.arg("-v");
        }
        let out = c
            .arg("run")
            .arg(sample_repo())
            .args(["--", "true"])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    };
    let verbose = run(true);
    let line = verbose
        .lines()
        .find(|l| l.contains("run created"))
        .unwrap_or_else(|| panic!("-v logs the run's creation: {verbose}"));
    assert!(
        line.contains("INFO") && line.contains("run=run_") && line.contains("backend=process"),
        "{line}"
    );
    let plain = run(false);
    assert!(
        !plain.contains("INFO") && !plain.contains("run created"),
        "{plain}"
    );
}

/// Docker and the `crownest/python-node` image are here; without them this fails when
/// `CROWNEST_REQUIRE_DOCKER=1`, and is skipped (said on stderr) otherwise.
fn docker_usable() -> bool {
    let ok = std::process::Command::new("docker")
        .args(["image", "inspect", "crownest/python-node:latest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CROWNEST_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "CROWNEST_REQUIRE_DOCKER=1 but docker or crownest/python-node is not usable"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: docker or crownest/python-node unavailable (set CROWNEST_REQUIRE_DOCKER=1 to fail)\n",
        );
    }
    ok
}

/// `docker ARGS...`, its output.
fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

/// Removes a container (and its anonymous volume) when dropped, also when the test fails.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

/// A kept Docker sandbox is named by its container, and the commands the summary prints
/// work: `docker cp NAME:/workspace` copies the workspace out, `docker start` + `docker
/// exec` reach it.
#[test]
fn a_kept_docker_sandbox_names_its_container_and_the_printed_commands_work() {
    if !docker_usable() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path())
        .args(["run", "--backend", "docker", "--keep-sandbox", "10m"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "echo kept > mark.txt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = err
        .lines()
        .find(|l| l.contains("sandbox kept until"))
        .unwrap_or_else(|| panic!("{err}"))
        .to_owned();
    let name = line
        .split_once(": container ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| panic!("{line}"));
    let _cleanup = RemoveContainer(name.clone());
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        line.contains("(for 9m") || line.contains("(for 10m"),
        "{line}"
    );
    assert!(
        line.contains("opens the docker backend removes it"),
        "{line}"
    );
    assert!(
        line.contains(&format!("`docker cp {name}:/workspace ./workspace`"))
            && line.contains(&format!("`docker start {name}`"))
            && line.contains(&format!("`docker exec -it {name} sh`")),
        "{line}"
    );
    assert!(!line.contains("volume "), "no named volume: {line}");

    // The container exists under that name and is the run's sandbox.
    let sandbox = newest_run(home.path())["sandbox"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"crownest.sandbox\"}}",
        &name,
    ]);
    assert!(inspect.status.success(), "{inspect:?}");
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), sandbox);
    assert!(
        name.starts_with(&format!("{sandbox}.kept-until-")),
        "{name}"
    );

    // `docker cp NAME:/workspace ./workspace`, as printed.
    let dest = tempfile::tempdir().unwrap();
    let ws = dest.path().join("workspace");
    let cp = docker(&["cp", &format!("{name}:/workspace"), ws.to_str().unwrap()]);
    assert!(cp.status.success(), "{cp:?}");
    assert_eq!(
        std::fs::read_to_string(ws.join("mark.txt")).unwrap(),
        "kept\n"
    );
    assert!(ws.join("main.py").is_file(), "the workspace, extracted");

    // `docker start NAME` then `docker exec NAME ...` (without -it: no terminal here).
    let start = docker(&["start", &name]);
    assert!(start.status.success(), "{start:?}");
    let exec = docker(&["exec", &name, "cat", "/workspace/mark.txt"]);
    assert!(exec.status.success(), "{exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "kept\n");
}

/// `crownest run --backend docker` starts making its head start's container while it opens
/// the store; when the store cannot be opened, the command fails and leaves no container
/// of its own behind (the backend is shut down, its head start removed), instead of
/// leaving it to the next sweep.
#[test]
fn a_run_whose_store_cannot_open_leaves_no_head_start_behind() {
    if !docker_usable() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // The store's directory is a file: opening the store fails.
    std::fs::write(home.path().join("store"), b"not a directory").unwrap();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("crownest"))
        .env_remove("CROWNEST_HOME")
        .arg("--home")
        .arg(home.path())
        .args(["run", "--backend", "docker"])
        .arg(sample_repo())
        .args(["--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{err}");
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=crownest.owner_pid={pid}"),
    ]);
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    for id in left.split_whitespace() {
        let _ = docker(&["rm", "-f", "-v", id]);
    }
    assert_eq!(left.trim(), "", "containers left by pid {pid}: {err}");
}
