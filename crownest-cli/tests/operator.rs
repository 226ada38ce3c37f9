//! What an operator of `crownest serve` uses: `runs` filters and `delete`, locally and
//! through a server; https with `--tls-cert`/`--tls-key` and a client trusting it with
//! `--ca-cert`; JSON logs with an access line per request inside its request span.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "operator-test-token";

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

/// A `crownest` command with nothing inherited from the caller's CROWNEST_* variables.
fn crownest() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("crownest"));
    for v in [
        "CROWNEST_HOME",
        "CROWNEST_SERVER",
        "CROWNEST_TOKEN",
        "CROWNEST_CA_CERT",
        "CROWNEST_LOG_FORMAT",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c
}

fn local(home: &Path) -> Command {
    let mut c = crownest();
    c.arg("--home").arg(home);
    c
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ids(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// A running `crownest serve` (killed on drop).
struct Server {
    child: Child,
    url: String,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    // The child is waited for by `Drop`.
    #[allow(clippy::zombie_processes)]
    fn start(home: &Path, global: &[&str], args: &[&str]) -> Self {
        let mut child = local(home)
            .args(global)
            .args(["serve", "--listen", "127.0.0.1:0", "--backends", "process"])
            .args(args)
            .env("CROWNEST_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("serve printed no `listening on` line");
            if let Some(url) = line.strip_prefix("listening on ") {
                let url = url.trim().to_owned();
                let addr = url.split_once("://").unwrap().1.to_owned();
                return Self {
                    child,
                    url,
                    addr,
                    stderr: rx,
                };
            }
        }
    }

    /// `crownest --server URL` with the token in the environment.
    fn client(&self) -> Command {
        let mut c = crownest();
        c.args(["--server", &self.url]).env("CROWNEST_TOKEN", TOKEN);
        c
    }

    /// A plain HTTP/1.1 request; the status code and the body.
    fn http(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    }

    /// The next stderr line `pick` accepts (waiting up to 30 s).
    fn stderr_line(&self, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("serve printed no such line");
            if pick(&line) {
                return line;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each filter of `crownest runs` on `conn` (a local or a `--server` command maker).
fn check_filters(conn: &dyn Fn() -> Command, team_a: &str, team_b: &str) {
    let query = |args: &[&str]| {
        let mut c = conn();
        c.args(["runs", "--json"]).args(args);
        let mut got = ids(&run_ok(&mut c));
        got.sort();
        got
    };
    let mut both = vec![team_a.to_owned(), team_b.to_owned()];
    both.sort();
    assert_eq!(query(&[]), both);
    assert_eq!(query(&["--label", "team=a"]), vec![team_a]);
    assert_eq!(
        query(&["--label", "team=a", "--label", "tier=x"]),
        Vec::<String>::new()
    );
    assert_eq!(query(&["--status", "failed"]), vec![team_b]);
    assert_eq!(query(&["--backend", "process"]), both);
    assert_eq!(query(&["--backend", "docker"]), Vec::<String>::new());
    assert_eq!(query(&["--since", "1h"]), both);
    assert_eq!(
        query(&["--until", "2000-01-01T00:00:00Z"]),
        Vec::<String>::new()
    );
    assert_eq!(
        query(&["--since", "2000-01-01T00:00:00Z", "--label", "team=b"]),
        vec![team_b]
    );
    let mut c = conn();
    let out = c
        .args(["runs", "--since", "last tuesday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a time that does not parse");
}

#[test]
fn runs_filters_and_delete_locally_and_through_a_server() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    run_ok(
        local(h)
            .arg("run")
            .arg(sample_repo())
            .args([
                "--backend",
                "process",
                "--label",
                "team=a",
                "--label",
                "tier=y",
            ])
            .args(["--", "sh", "-c", "true"]),
    );
    let out = local(h)
        .arg("run")
        .arg(sample_repo())
        .args(["--backend", "process", "--label", "team=b"])
        .args(["--", "sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let team_a = ids(&run_ok(
        local(h).args(["runs", "--json", "--label", "team=a"]),
    ));
    let team_b = ids(&run_ok(
        local(h).args(["runs", "--json", "--label", "team=b"]),
    ));
    let (team_a, team_b) = (team_a[0].clone(), team_b[0].clone());

    check_filters(&|| local(h), &team_a, &team_b);

    let server = Server::start(h, &[], &[]);
    check_filters(&|| server.client(), &team_a, &team_b);

    // A run that has not ended is not deleted (exit 2), through the server.
    let (status, body) = server.http(
        "POST",
        "/v1/runs",
        "",
        r#"{"command": ["true"], "backend": "process"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    let live = live["id"].as_str().unwrap();
    let out = server.client().args(["delete", live]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    run_ok(server.client().args(["cancel", live]));

    // An ended one is, for good.
    let out = run_ok(server.client().args(["delete", &team_a]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted"));
    let out = server.client().args(["show", &team_a]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "deleted: not found");
    drop(server);

    // Locally too (`rm` is the alias).
    run_ok(local(h).args(["rm", &team_b]));
    run_ok(local(h).args(["delete", live]));
    let left = ids(&run_ok(local(h).args(["runs", "--json"])));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn serve_speaks_https_to_a_client_that_trusts_its_certificate() {
    let home = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = home.path().join("cert.pem");
    let key = home.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::start(
        home.path(),
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);

    let out = run_ok(
        server
            .client()
            .arg("--ca-cert")
            .arg(&cert)
            .args(["runs", "--json"]),
    );
    assert!(ids(&out).is_empty());
    // The same from the environment.
    run_ok(server.client().env("CROWNEST_CA_CERT", &cert).arg("runs"));
    // A client that does not trust the certificate never talks to the server.
    let out = server.client().arg("runs").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    // A whole run over https.
    let out = server
        .client()
        .arg("--ca-cert")
        .arg(&cert)
        .arg("run")
        .arg(sample_repo())
        .args(["--backend", "process", "--", "sh", "-c", "echo over-tls"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("over-tls"));
    // A key that does not match or a missing file: a usage error before anything listens.
    let out = local(home.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--backends", "process"])
        .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key"])
        .arg(home.path().join("missing.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn json_logs_carry_an_access_line_per_request_in_its_span() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &["--log-format", "json"], &[]);
    let (status, _) = server.http(
        "GET",
        "/v1/runs?limit=1",
        "X-Request-Id: trace-me-1\r\n",
        "",
    );
    assert_eq!(status, 200);
    let line = server.stderr_line(|l| l.starts_with('{') && l.contains("trace-me-1"));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "crownest::access", "{line}");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["status"], 200, "{line}");
    assert_eq!(v["fields"]["route"], "/v1/runs", "{line}");
    assert_eq!(v["span"]["name"], "request", "{line}");
    assert_eq!(v["span"]["request_id"], "trace-me-1", "{line}");
    // An unauthenticated request is logged too, with its generated id.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "GET /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let id = resp
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_owned();
    let line = server.stderr_line(|l| l.starts_with('{') && l.contains(&id));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["status"], 401, "{line}");
}
