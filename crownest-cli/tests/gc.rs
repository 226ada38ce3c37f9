//! Garbage collection through the binary: `crownest gc` (on demand, `--json`), the periodic
//! pass of `crownest serve`, and a refused archive leaving no blob in the home.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("crownest")
}

/// `crownest --home <home>` with nothing inherited from the caller's CROWNEST_* variables.
fn crownest(home: &Path) -> Command {
    let mut c = Command::new(bin());
    for v in ["CROWNEST_HOME", "CROWNEST_SERVER", "CROWNEST_TOKEN"] {
        c.env_remove(v);
    }
    c.arg("--home").arg(home);
    c
}

/// A running `crownest serve` over `home`; killed if the test did not stop it.
struct Server {
    child: Child,
    addr: String,
    token: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    // The child is waited for by `Drop`.
    #[allow(clippy::zombie_processes)]
    fn start(home: &Path, extra: &[&str]) -> Self {
        let mut child = crownest(home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut token = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("serve printed no `listening on` line");
            if let Some(t) = line.strip_prefix("token: ") {
                token = Some(t.to_owned());
            }
            if let Some(url) = line.strip_prefix("listening on http://") {
                return Self {
                    child,
                    addr: url.trim().to_owned(),
                    token: token.expect("a generated token"),
                    stderr,
                };
            }
        }
    }

    /// A raw HTTP/1.1 request with an optional JSON body; the status and the body.
    fn http(&self, method: &str, path: &str, json: Option<&Value>) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = json.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
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

    /// Creates a run over the API; it waits in `awaiting_archive`. Returns its id.
    fn create_run(&self) -> String {
        let (status, body) = self.http(
            "POST",
            "/v1/runs",
            Some(&serde_json::json!({"command": ["true"]})),
        );
        assert_eq!(status, 201, "{body}");
        let run: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(run["status"], "awaiting_archive");
        run["id"].as_str().unwrap().to_owned()
    }

    fn run_status(&self, id: &str) -> String {
        let (status, body) = self.http("GET", &format!("/v1/runs/{id}"), None);
        assert_eq!(status, 200, "{body}");
        let run: Value = serde_json::from_str(&body).unwrap();
        run["status"].as_str().unwrap().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON: {:?}: {e}", String::from_utf8_lossy(out)))
}

#[test]
fn gc_deletes_stale_temp_files_and_says_what_it_removed() {
    let home = tempfile::tempdir().unwrap();
    let first = crownest(home.path()).arg("gc").output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "nothing to collect"
    );

    // A temp file of an upload that crashed two hours ago.
    let stale = home.path().join("store/tmp/crashed-upload");
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let out = crownest(home.path())
        .args(["gc", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = json_of(&out.stdout);
    assert_eq!(report["store"]["tempFilesDeleted"], 1, "{report:#}");
    assert_eq!(report["expiredRuns"], serde_json::json!([]), "{report:#}");
    assert!(!stale.exists());

    // In words.
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let out = crownest(home.path()).arg("gc").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deleted 1 stale temporary file(s)"
    );

    // gc works on the local store only.
    let remote = crownest(home.path())
        .args(["--server", "http://127.0.0.1:9", "gc"])
        .output()
        .unwrap();
    assert_eq!(remote.status.code(), Some(2));
}

#[test]
fn gc_expires_a_servers_idle_run_with_its_evidence() {
    let home = tempfile::tempdir().unwrap();
    // A long interval and the default TTL: only `crownest gc` below expires anything.
    let server = Server::start(home.path(), &["--gc-interval", "1h"]);
    let id = server.create_run();
    let kept = crownest(home.path())
        .args(["gc", "--json"])
        .output()
        .unwrap();
    assert!(kept.status.success());
    assert_eq!(json_of(&kept.stdout)["expiredRuns"], serde_json::json!([]));

    let out = crownest(home.path())
        .args(["gc", "--json", "--awaiting-archive-ttl", "1ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out.stdout);
    assert_eq!(report["expiredRuns"], serde_json::json!([id]), "{report:#}");

    // The server's run ended canceled, with the reason and its evidence.
    assert_eq!(server.run_status(&id), "canceled");
    let show = crownest(home.path()).args(["show", &id]).output().unwrap();
    assert!(show.status.success());
    let record = json_of(&show.stdout);
    assert_eq!(record["failure"]["kind"], "limit_exceeded", "{record:#}");
    assert!(
        record["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("awaiting_archive TTL expired"),
        "{record:#}"
    );
    let evidence = crownest(home.path())
        .args(["evidence", &id])
        .output()
        .unwrap();
    assert!(evidence.status.success());
    assert_eq!(json_of(&evidence.stdout)["status"], "canceled");
    let verify = crownest(home.path())
        .args(["verify", &id])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn serve_collects_garbage_on_its_interval() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(
        home.path(),
        &["--gc-interval", "200ms", "--awaiting-archive-ttl", "500ms"],
    );
    let id = server.create_run();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.run_status(&id) != "canceled" {
        assert!(
            Instant::now() < deadline,
            "the periodic gc never expired the run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = server.http("GET", &format!("/v1/runs/{id}/evidence"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(body.as_bytes())["status"], "canceled");
    // And it said so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve reported no gc pass");
        if line.starts_with("crownest: gc: expired 1 run(s)") {
            assert!(line.contains(&id), "{line}");
            break;
        }
    }
}

/// A .tar.gz whose one entry is `../evil`.
fn hostile_tgz() -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let name = b"../evil";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(5);
    header.set_cksum();
    let mut tar = Vec::new();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(b"pwned");
    tar.resize(1024, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_hostile_archive_refused_at_upload_leaves_no_blob_in_the_home() {
    use sha2::Digest as _;
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("evil.tar.gz");
    let bytes = hostile_tgz();
    std::fs::write(&tgz, &bytes).unwrap();
    let out = crownest(home.path())
        .arg("run")
        .arg(&tgz)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let blob = home
        .path()
        .join("store/blobs")
        .join(&sha[..2])
        .join(&sha[2..]);
    assert!(
        !blob.exists(),
        "the refused archive is not kept: {}",
        blob.display()
    );
}
