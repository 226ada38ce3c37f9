//! `crownest serve` as a child process (temp home, 127.0.0.1:0), and `crownest --server`
//! clients against it: auth, a whole run end to end with its exit codes and artifact,
//! cancel through the server, and the refusal of a non-loopback address without a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("crownest")
}

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

/// A `crownest` command with nothing inherited from the caller's CROWNEST_* variables.
fn crownest() -> Command {
    let mut c = Command::new(bin());
    for v in ["CROWNEST_HOME", "CROWNEST_SERVER", "CROWNEST_TOKEN"] {
        c.env_remove(v);
    }
    c
}

/// A running `crownest serve`; killed (SIGKILL) if the test did not stop it.
struct Server {
    child: Child,
    url: String,
    addr: String,
    token: String,
    /// Its stderr lines after `listening on`.
    stderr: mpsc::Receiver<String>,
    _home: tempfile::TempDir,
}

impl Server {
    /// A server offering the process backend (these tests run `python3` on the host), with
    /// a generated token.
    fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), &["--backends", "process"])
    }

    /// `crownest --home HOME serve --listen 127.0.0.1:0 ARGS...`; `token` is the generated
    /// one when it printed one, else empty.
    // The child is waited for by `stop` or `Drop`.
    #[allow(clippy::zombie_processes)]
    fn start_with(home: tempfile::TempDir, args: &[&str]) -> Self {
        let mut child = crownest()
            .arg("--home")
            .arg(home.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut token = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("serve printed no `listening on` line");
            if let Some(t) = line.strip_prefix("token: ") {
                t.clone_into(&mut token);
                assert_eq!(token.len(), 64, "{token}");
            }
            if let Some(url) = line.strip_prefix("listening on ") {
                let url = url.trim().to_owned();
                let addr = url.trim_start_matches("http://").to_owned();
                assert!(!addr.ends_with(":0"), "the real port is printed: {url}");
                return Self {
                    child,
                    url,
                    addr,
                    token,
                    stderr: rx,
                    _home: home,
                };
            }
        }
    }

    /// `crownest --server URL --token T ...`.
    fn client(&self) -> Command {
        let mut c = crownest();
        c.args(["--server", &self.url, "--token", &self.token]);
        c
    }

    /// A raw HTTP/1.1 request; returns the status code and the body.
    fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The next stderr line that contains `needle` (waiting up to 60 s for it).
    fn stderr_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("serve printed no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// SIGTERM, then the exit status within the shutdown budget.
    fn stop(mut self) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn auth_is_required_except_for_healthz() {
    let s = Server::start();
    let (status, body) = s.http("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    let (status, body) = s.http("GET", "/v1/runs", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _) = s.http("GET", "/v1/runs", Some("wrong-token"));
    assert_eq!(status, 401);
    let (status, body) = s.http("GET", "/v1/runs", Some(&s.token));
    assert_eq!(status, 200, "{body}");

    // The CLI reports a wrong token as a failure, and doctor says why.
    let out = crownest()
        .args(["--server", &s.url, "--token", "wrong", "runs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"));
    assert!(
        stderr.contains("set CROWNEST_TOKEN") && stderr.contains("--token-file FILE"),
        "an auth failure says how to pass a token: {stderr}"
    );
    let hint = stderr
        .lines()
        .find(|l| l.contains("set CROWNEST_TOKEN"))
        .unwrap()
        .to_owned();
    // No token at all: the same hint.
    let out = crownest()
        .args(["--server", &s.url, "runs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&hint),
        "{out:?}"
    );
    let out = crownest()
        .args(["--server", &s.url, "--token", "wrong", "doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], true);
    assert_eq!(report["authorized"], false);
    assert!(
        hint.ends_with(report["authHint"].as_str().unwrap()),
        "{report}"
    );
    // doctor's text gives the hint every command gives.
    let out = crownest()
        .args(["--server", &s.url, "--token", "wrong", "doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let doctor_hint = text
        .lines()
        .find_map(|l| l.strip_prefix("hint:   "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(hint.ends_with(doctor_hint), "{hint} / {doctor_hint}");
    let out = s.client().arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    assert!(s.stop().success());
}

#[test]
fn runs_end_to_end_through_the_server() {
    let s = Server::start();
    // Succeeds: exit 0, every event as JSON, the artifact collected.
    let out = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args([
            "--json",
            "--artifact",
            "out/result.json",
            "--",
            "python3",
            "main.py",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = json_lines(&out.stdout);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "terminal");
    assert_eq!(last["status"], "succeeded");
    let stdout: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert!(stdout.contains("read 8 numbers, sum 31"), "{stdout}");
    let run = last["runId"].as_str().unwrap().to_owned();

    // The same run seen through the other commands.
    let out = s.client().args(["show", &run]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["artifacts"][0]["path"], "out/result.json");

    let out = s.client().args(["verify", &run]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 blob(s) re-hashed"));

    let dir = tempfile::tempdir().unwrap();
    let out = s
        .client()
        .args(["artifacts", &run, "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let result: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/result.json")).unwrap())
            .unwrap();
    assert_eq!(result["sum"], 31);

    let out = s
        .client()
        .args(["evidence", &run, "--in-toto"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let statement: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statement["subject"][0]["name"], "out/result.json");

    let out = s
        .client()
        .args(["events", &run, "--follow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_lines(&out.stdout).len(), events.len());

    // Fails: exit 1, the failure typed.
    let out = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args(["--json", "--", "python3", "-c", "import sys; sys.exit(3)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let last = json_lines(&out.stdout).pop().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["exitCode"], 3);

    // Rejected input: a declared digest that does not match is exit 2, nothing runs.
    let out = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args([
            "--sha256",
            &"0".repeat(64),
            "--size-bytes",
            "1",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Canceling an ended run is refused input, as locally.
    let out = s.client().args(["cancel", &run]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = s.client().args(["runs", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let runs = json_lines(&out.stdout);
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[2]["id"], run.as_str());

    assert!(s.stop().success());
}

/// Runs `c` to its end, or kills it and fails the test after `secs` (a hang guard, not a
/// timing assertion).
fn output_within(c: &mut Command, secs: u64) -> std::process::Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{c:?} did not end: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `events --follow` of a finished run resumed at (or past) its end ends at once, through
/// the server (SSE 204) and on the server's home directly.
#[test]
fn events_follow_of_a_finished_run_ends_at_its_end() {
    let s = Server::start();
    let out = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args(["--json", "--", "python3", "-c", "print(1)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = json_lines(&out.stdout);
    let last = events.last().unwrap();
    let run = last["runId"].as_str().unwrap().to_owned();
    let seq = last["seq"].as_u64().unwrap();
    for after in [seq, seq + 5] {
        let after = after.to_string();
        let out = output_within(
            s.client()
                .args(["events", &run, "--follow", "--after-seq", &after]),
            60,
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let out = output_within(
            crownest().arg("--home").arg(s._home.path()).args([
                "events",
                &run,
                "--follow",
                "--after-seq",
                &after,
            ]),
            60,
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    let before = (seq - 1).to_string();
    let out = output_within(
        s.client()
            .args(["events", &run, "--follow", "--after-seq", &before]),
        60,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let tail = json_lines(&out.stdout);
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0]["type"], "terminal");
    assert!(s.stop().success());
}

#[test]
fn cancel_goes_through_the_server() {
    let s = Server::start();
    let mut runner = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args([
            "--json",
            "--",
            "python3",
            "-c",
            "import time; print('started', flush=True); time.sleep(120)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    let run = loop {
        let line = lines.next().expect("run printed no stdout event").unwrap();
        let ev: Value = serde_json::from_str(&line).unwrap();
        if ev["type"] == "stdout" {
            break ev["runId"].as_str().unwrap().to_owned();
        }
    };
    let out = s.client().args(["cancel", &run]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let last = rest.last().unwrap();
    assert_eq!(last["type"], "terminal");
    assert_eq!(last["status"], "canceled");
    assert!(
        rest.iter()
            .any(|e| e["type"] == "kill" && e["reason"] == "cancel")
    );
    assert_eq!(runner.wait().unwrap().code(), Some(130));
    assert!(s.stop().success());
}

#[test]
fn serve_shutdown_cancels_its_running_runs() {
    let s = Server::start();
    let mut runner = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args([
            "--json",
            "--",
            "python3",
            "-c",
            "import time; print('started', flush=True); time.sleep(120)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("run printed no stdout event").unwrap();
        if serde_json::from_str::<Value>(&line).unwrap()["type"] == "stdout" {
            break;
        }
    }
    // `stop` waits at most 30 s, far less than the command's 120 s sleep: the server
    // canceled the run rather than waiting for it.
    assert!(s.stop().success());
    let last: Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert_eq!(last["type"], "terminal", "the client saw the end over SSE");
    assert_eq!(last["status"], "canceled");
    assert_eq!(runner.wait().unwrap().code(), Some(130));
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest()
        .arg("--home")
        .arg(home.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a token"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    // --server with serve is a usage error too.
    let out = crownest()
        .args(["--server", "http://127.0.0.1:1", "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn secrets_travel_to_the_server_and_never_come_back_or_get_stored() {
    let s = Server::start();
    let secret = "srv-S3cret-Pq7";
    let out = s
        .client()
        .env("SRV_TOKEN", secret)
        .arg("run")
        .arg(sample_repo())
        .args(["--json", "--secret", "SRV_TOKEN", "--env", "CI=true", "--"])
        .args([
            "python3",
            "-c",
            "import os; print(os.environ['SRV_TOKEN']); print(os.environ['CI'])",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = json_lines(&out.stdout);
    let stdout: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(
        stdout, "***\ntrue\n",
        "the secret reached the command, masked"
    );
    let run = events.last().unwrap()["runId"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/runs/{run}"),
        "/v1/runs".to_owned(),
        format!("/v1/runs/{run}/evidence"),
    ] {
        let (status, body) = s.http("GET", &path, Some(&s.token));
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains(secret), "{path} returns the secret");
        assert!(body.contains("SRV_TOKEN"), "{path} names it: {body}");
    }
    // Nothing of the server's home (its SQLite store and blobs) holds the value.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut all = Vec::new();
    files(s._home.path(), &mut all);
    assert!(!all.is_empty());
    for f in all {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
    assert!(s.stop().success());
}

/// A client of `s` with a token from the environment (never on argv).
/// After a run through a server, the printed follow-up commands repeat `--server URL` (so
/// they work when copied), and a kept sandbox is said to be on the server's host, with no
/// path of this one.
#[test]
fn hints_after_a_run_through_a_server_repeat_server() {
    let s = Server::start();
    let out = client_with_env_token(&s, &s.token)
        .arg("run")
        .arg(sample_repo())
        .args(["--keep-sandbox", "2s", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let evidence = err
        .lines()
        .find(|l| l.contains("evidence:"))
        .unwrap_or_else(|| panic!("{err}"));
    let id = evidence
        .split_whitespace()
        .find(|w| w.starts_with("run_"))
        .unwrap();
    assert!(
        evidence.contains(&format!(
            "crownest --server {} evidence {id}  (verify: crownest --server {} verify {id})",
            s.url, s.url
        )),
        "{evidence}"
    );
    // The printed command works as it is (with the token from the environment).
    let copied: Vec<&str> = evidence
        .split_once("evidence: crownest ")
        .unwrap()
        .1
        .split("  (")
        .next()
        .unwrap()
        .split(' ')
        .collect();
    let out = crownest()
        .env("CROWNEST_TOKEN", &s.token)
        .args(&copied)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{copied:?}: {out:?}");
    let kept = err
        .lines()
        .find(|l| l.contains("sandbox kept until"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        kept.contains("on the server's host (not this one)")
            && kept.contains("the server removes it then"),
        "{kept}"
    );
    assert!(!kept.contains("workspace/"), "no local path: {kept}");
    assert!(s.stop().success());
}

fn client_with_env_token(s: &Server, token: &str) -> Command {
    let mut c = crownest();
    c.args(["--server", &s.url]).env("CROWNEST_TOKEN", token);
    c
}

/// `--backends` is the server's policy: a backend it does not list is refused at create
/// (400 `backend_not_allowed`, exit 2), process included when it is not named; an unknown
/// template is refused at create (exit 2) and nothing is stored; `--max` bounds what a run
/// may ask for; `--max-concurrent-runs` is taken.
#[test]
fn serve_policy_backends_templates_and_maxima() {
    let s = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--backends",
            "process",
            "--max",
            "timeoutMs=60000",
            "--max-concurrent-runs",
            "2",
        ],
    );
    let offered = s.stderr_line("backends offered");
    assert!(offered.contains("process (default process)"), "{offered}");
    let refuse = |args: &[&str], needle: &str| {
        let out = client_with_env_token(&s, &s.token)
            .arg("run")
            .arg(sample_repo())
            .args(args)
            .args(["--", "python3", "main.py"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    refuse(&["--backend", "wasm"], "not allowed on this server");
    refuse(&["--template", "python-nodee"], "unknown template");
    refuse(&["--timeout", "2m"], "above the engine maximum 60000");
    // Nothing of the refused runs was stored; a run within the policy works.
    let out = client_with_env_token(&s, &s.token)
        .arg("run")
        .arg(sample_repo())
        .args(["--timeout", "30s", "--", "python3", "-c", "print('ok')"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = client_with_env_token(&s, &s.token)
        .args(["runs", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_lines(&out.stdout).len(), 1, "{out:?}");
    assert!(s.stop().success());

    // Process is off unless named.
    let s = Server::start_with(tempfile::tempdir().unwrap(), &["--backends", "wasm"]);
    let out = s
        .client()
        .arg("run")
        .arg(sample_repo())
        .args(["--backend", "process", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"process\" is not allowed"),
        "{out:?}"
    );
    assert!(s.stop().success());

    // A backend this build does not have, or an unknown limit, is a usage error.
    for args in [
        &["--backends", "k8s"][..],
        &["--backends", "process", "--max", "nonsense=1"][..],
    ] {
        let home = tempfile::tempdir().unwrap();
        let out = crownest()
            .arg("--home")
            .arg(home.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

/// `token add` mints a token, prints it once and keeps only its sha256 with its scopes;
/// `serve` reads the file (from the home by default) and checks each request's scope;
/// clients give the token through `CROWNEST_TOKEN` or `--token-file`, never argv.
#[test]
fn tokens_file_with_scopes() {
    let home = tempfile::tempdir().unwrap();
    let add = |name: &str, scopes: &str| -> String {
        let out = crownest()
            .arg("--home")
            .arg(home.path())
            .args(["token", "add", name, "--scopes", scopes])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(token.len(), 64, "{token}");
        token
    };
    let ci = add("ci", "submit,read");
    let reader = add("dashboard", "read");
    let ops = add("ops", "admin");
    // A duplicate name and an unknown scope are refused.
    for (name, scopes) in [("ci", "read"), ("x", "write")] {
        let out = crownest()
            .arg("--home")
            .arg(home.path())
            .args(["token", "add", name, "--scopes", scopes])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    let file = home.path().join("tokens.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for t in [&ci, &reader, &ops] {
        assert!(!text.contains(t.as_str()), "the file keeps hashes only");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o077,
        0
    );
    let out = crownest()
        .arg("--home")
        .arg(home.path())
        .args(["token", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ci\tread,submit\ndashboard\tread\nops\tadmin\n"
    );

    let s = Server::start_with(home, &["--backends", "process"]);
    assert!(
        s.token.is_empty(),
        "no token is generated when a tokens file exists"
    );
    let line = s.stderr_line("token(s) with scopes");
    assert!(line.contains("3 token(s)"), "{line}");
    // ci (submit + read) runs a whole run through the server, token from the environment.
    let out = client_with_env_token(&s, &ci)
        .arg("run")
        .arg(sample_repo())
        .args(["--json", "--", "python3", "-c", "print(1)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The read-only token lists runs (from a file) but cannot submit one.
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{reader}\n")).unwrap();
    let out = crownest()
        .args(["--server", &s.url, "--token-file"])
        .arg(token_file.path())
        .args(["runs", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_lines(&out.stdout).len(), 1);
    let out = client_with_env_token(&s, &reader)
        .arg("run")
        .arg(sample_repo())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("forbidden"), "{out:?}");
    // The 403 says which scope is missing and how to pass another token.
    assert!(
        err.contains("the token is valid but lacks the submit scope this request needs")
            && err.contains("--scopes submit")
            && err.contains("set CROWNEST_TOKEN")
            && err.contains("--token-file FILE"),
        "{err}"
    );
    // Metrics need admin.
    let (status, body) = s.http("GET", "/metrics", Some(&ci));
    assert_eq!(status, 403, "{body}");
    let (status, body) = s.http("GET", "/metrics", Some(&ops));
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.http("GET", "/v1/runs", Some("not-a-token"));
    assert_eq!(status, 401);
    // --token and --token-file together are a usage error.
    let out = crownest()
        .args(["--server", &s.url, "--token", "x", "--token-file"])
        .arg(token_file.path())
        .arg("runs")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(s.stop().success());
}

/// The PostgreSQL server of the test run (`scripts/postgres.sh`), or `None` (skipped,
/// or a failure with `CROWNEST_REQUIRE_POSTGRES=1`).
fn postgres_url() -> Option<String> {
    match std::env::var("CROWNEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CROWNEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("CROWNEST_REQUIRE_POSTGRES=1 but CROWNEST_POSTGRES_URL is not set")
        }
        _ => None,
    }
}

/// A database of its own on the test server (dropped when the test ends); its URL.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("cli_{}_{n}", std::process::id());
        let psql = |sql: &str| {
            let out = Command::new("psql")
                .args([admin, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
                .output()
                .expect("psql (installed with the server by scripts/postgres.sh)");
            assert!(out.status.success(), "{sql}: {out:?}");
        };
        psql(&format!("DROP DATABASE IF EXISTS {name}"));
        psql(&format!("CREATE DATABASE {name}"));
        let (base, _) = admin.rsplit_once('/').unwrap();
        Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-Atc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// `--store postgres://... --blobs DIR`: two servers (two homes, as two hosts) on one
/// database and one blob directory. A run submitted through A while A's only slot is busy
/// is executed by B; both servers and a local command on a third home see every run, its
/// events and its evidence. A bad `--store` or a `--blobs` without one is a usage error.
#[test]
fn two_servers_on_one_postgres_store_share_the_runs() {
    let out = crownest()
        .args(["--store", "mysql://db/x", "runs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres://"));
    let out = crownest()
        .args(["--blobs", "/tmp/x", "runs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let Some(admin) = postgres_url() else {
        return;
    };
    let db = Database::create(&admin);
    let blobs = tempfile::tempdir().unwrap();
    let blobs = blobs.path().to_str().unwrap().to_owned();
    let shared = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--store".into(),
            db.url.clone(),
            "--blobs".into(),
            blobs.clone(),
            "--backends".into(),
            "process".into(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let a_args = shared(&["--max-concurrent-runs", "1"]);
    let a = Server::start_with(
        tempfile::tempdir().unwrap(),
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b_args = shared(&[]);
    let b = Server::start_with(
        tempfile::tempdir().unwrap(),
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let submit = |argv: &[&str]| -> String {
        let out = a
            .client()
            .args(["run", "--detach"])
            .arg(sample_repo())
            .arg("--")
            .args(argv)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let long = submit(&["python3", "-c", "import time; time.sleep(3)"]);
    let quick = submit(&["python3", "main.py"]);
    // Followed through B: every event once, in order, to the end.
    let out = output_within(b.client().args(["events", &quick, "--follow"]), 120);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = json_lines(&out.stdout);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    // A's slot was busy with the long run: B (the other host) executed the quick one.
    let record = |s: &Server, id: &str| -> Value {
        let out = s.client().args(["show", id]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let quick_owner = record(&a, &quick)["owner"]["instance"].clone();
    let long_owner = record(&b, &long)["owner"]["instance"].clone();
    assert!(quick_owner.is_string() && long_owner.is_string());
    assert_ne!(quick_owner, long_owner, "two hosts executed the two runs");
    let out = output_within(b.client().args(["events", &long, "--follow"]), 120);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        json_lines(&out.stdout).last().unwrap()["status"],
        "succeeded"
    );
    // A local command on a third home reads the same store, and verifies the evidence.
    let home = tempfile::tempdir().unwrap();
    let local = |args: &[&str]| {
        crownest()
            .arg("--home")
            .arg(home.path())
            .args(["--store", &db.url, "--blobs", &blobs])
            .args(args)
            .output()
            .unwrap()
    };
    let out = local(&["runs", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&quick) && listed.contains(&long),
        "{listed}"
    );
    let out = local(&["verify", &quick]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(a);
    drop(b);
}

/// Three `crownest serve` processes on one PostgreSQL database (three homes, as three
/// hosts): 300 runs submitted through the first one's HTTP API are each executed exactly
/// once, by all three; then the server driving a run is killed (`kill -9`), and another
/// server fails that run `host_restarted`, with evidence that verifies, within its lease
/// (4 s: the whole suite runs beside it on two cores) + 5 s, and nobody runs it again.
#[test]
fn three_servers_share_300_runs_and_outlive_a_kill() {
    let Some(admin) = postgres_url() else {
        return;
    };
    let db = Database::create(&admin);
    let blobs = tempfile::tempdir().unwrap();
    let args = [
        "--store",
        &db.url,
        "--blobs",
        blobs.path().to_str().unwrap(),
        "--backends",
        "process",
        "--max-concurrent-runs",
        "2",
        "--lease-ttl",
        "4s",
    ];
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start_with(tempfile::tempdir().unwrap(), &args))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clients: Vec<crownest_http::Client> = servers
        .iter()
        .map(|s| crownest_http::Client::new(&s.url, Some(s.token.clone())).unwrap())
        .collect();
    let archive = crownest_core::testing::tar_gz(&[("main.sh", b"echo hello\n", 0o644)]);
    let desc = crownest_core::testing::descriptor_of(&archive);
    let submit = |argv: Vec<&'static str>| {
        let (c, archive, desc) = (&clients[0], archive.clone(), desc.clone());
        async move {
            let run = c
                .create_run(&crownest_core::RunSpec::new(argv))
                .await
                .unwrap();
            c.upload_archive(&run.id, &desc, archive).await.unwrap();
            c.start(&run.id).await.unwrap()
        }
    };
    let started = Instant::now();
    let ids: Vec<crownest_core::RunId> = rt.block_on(async {
        use futures::StreamExt as _;
        futures::stream::iter(0..300)
            .map(|_| submit(vec!["sh", "-c", "sleep 0.2; sh main.sh"]))
            .buffer_unordered(8)
            .map(|r| r.id)
            .collect()
            .await
    });
    let mut per_server = std::collections::BTreeMap::<String, usize>::new();
    rt.block_on(async {
        for id in &ids {
            let done = loop {
                let r = clients[1].get_run(id).await.unwrap();
                if r.status.is_terminal() {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(
                done.status.as_str(),
                "succeeded",
                "{id}: {:?}",
                done.failure
            );
            let events = clients[2].list_events(id, 0, 1000).await.unwrap();
            let starts = events
                .iter()
                .filter(|e| matches!(e.kind, crownest_core::event::EventKind::Environment { .. }))
                .count();
            assert_eq!(starts, 1, "{id} was executed exactly once");
            *per_server.entry(done.owner.unwrap().instance).or_default() += 1;
        }
    });
    eprintln!(
        "300 runs through one server's API, executed by {per_server:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(per_server.values().sum::<usize>(), 300);
    assert_eq!(
        per_server.len(),
        3,
        "all three servers executed runs: {per_server:?}"
    );

    // kill -9 of the server driving a long run (the run's owner is that server's process).
    let long = rt.block_on(submit(vec!["sleep", "600"]));
    let owner_pid = rt.block_on(async {
        loop {
            let r = clients[1].get_run(&long.id).await.unwrap();
            if r.status.as_str() == "running" {
                break r.owner.unwrap().pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut servers = servers;
    let index = servers
        .iter()
        .position(|s| s.child.id() == owner_pid)
        .expect("the owner is one of the servers");
    let mut dead = servers.remove(index);
    let killed = Instant::now();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let survivor =
        crownest_http::Client::new(&servers[0].url, Some(servers[0].token.clone())).unwrap();
    let done = rt.block_on(async {
        loop {
            let r = survivor.get_run(&long.id).await.unwrap();
            if r.status.is_terminal() {
                break r;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(4 + 5),
                "not terminal within lease + 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eprintln!(
        "the killed server's run was terminal {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(done.status.as_str(), "failed");
    let failure = done.failure.unwrap();
    assert_eq!(
        failure.kind,
        crownest_core::event::FailureKind::HostRestarted
    );
    let out = servers[0]
        .client()
        .args(["verify", long.id.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = rt
        .block_on(survivor.list_events(&long.id, 0, 1000))
        .unwrap();
    let starts = events
        .iter()
        .filter(|e| matches!(e.kind, crownest_core::event::EventKind::Environment { .. }))
        .count();
    assert_eq!(starts, 1, "never started again");
}
