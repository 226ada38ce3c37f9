//! `crownest templates` and templates registered in `<home>/templates.json`, through the
//! built binary. The Docker part needs the engine and the `crownest/python-node` image: it
//! fails without them when `CROWNEST_REQUIRE_DOCKER=1`, and is skipped (said on stderr)
//! otherwise.
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
        .timeout(Duration::from_secs(180));
    c
}

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

fn listed(home: &Path) -> Vec<Value> {
    let out = crownest(home)
        .args(["templates", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn template<'a>(list: &'a [Value], backend: &str, name: &str) -> Option<&'a Value> {
    list.iter()
        .find(|b| b["backend"] == backend)?
        .get("templates")?
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

#[test]
fn the_process_template_is_listed_with_its_versions() {
    let home = tempfile::tempdir().unwrap();
    let out = crownest(home.path()).arg("templates").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("process"))
        .unwrap_or_else(|| panic!("a process line: {text}"));
    assert!(
        line.contains("python-node") && line.contains("python3 3."),
        "{line}"
    );
    let list = listed(home.path());
    let t = template(&list, "process", "python-node").expect("process python-node");
    assert_eq!(t["available"], true);
}

#[test]
fn a_malformed_registry_is_a_usage_error_naming_the_file() {
    let home = tempfile::tempdir().unwrap();
    for bad in [
        r#"{"dokcer": {"x": "y"}}"#,
        r#"{"docker": {"a b": "y"}}"#,
        r#"{"wasm": {"my-py": {"python": {"path": "python.wasm", "sha256": "00"}}}}"#,
        "{",
    ] {
        std::fs::write(home.path().join("templates.json"), bad).unwrap();
        let out = crownest(home.path()).arg("templates").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("templates.json"), "{bad}: {err}");
        if bad.contains("wasm") {
            assert!(
                err.contains(
                    r#"wasm template "my-py": python: path "python.wasm" must be absolute"#
                ),
                "names the entry: {err}"
            );
        }
        // Every command that opens the home refuses it the same way.
        crownest(home.path())
            .arg("run")
            .arg(sample_repo())
            .args(["--", "true"])
            .assert()
            .code(2);
    }
}

#[test]
fn a_registered_docker_template_is_listed_and_runs() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("templates.json"),
        r#"{"docker": {"my-tools": "crownest/python-node:latest",
                       "not-built": "crownest/no-such-image:latest"}}"#,
    )
    .unwrap();
    let list = listed(home.path());
    let required = std::env::var("CROWNEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let usable = template(&list, "docker", "python-node").is_some_and(|t| t["available"] == true);
    if !usable {
        assert!(
            !required,
            "CROWNEST_REQUIRE_DOCKER=1 but docker is not usable: {list:?}"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: Docker or its image is missing (set CROWNEST_REQUIRE_DOCKER=1 to fail)\n",
        );
        return;
    }
    let mine = template(&list, "docker", "my-tools").expect("my-tools listed");
    assert_eq!(mine["available"], true, "{mine}");
    let missing = template(&list, "docker", "not-built").expect("not-built listed");
    assert_eq!(missing["available"], false);
    assert!(
        missing["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-image"),
        "{missing}"
    );
    // doctor's text names the template, says why, and which `setup` makes the image.
    let out = crownest(home.path()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("template not-built:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("unavailable")
            && line.contains("crownest/no-such-image:latest")
            && line.contains("crownest setup docker"),
        "{line}"
    );

    crownest(home.path())
        .args(["run", "--backend", "docker", "--template", "my-tools"])
        .arg(sample_repo())
        .args(["--", "python3", "-c", "print('mine')"])
        .assert()
        .code(0);
    // An unknown template is refused at create: exit 2, before anything is uploaded.
    let out = crownest(home.path())
        .args(["run", "--backend", "docker", "--template", "nope"])
        .arg(sample_repo())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("my-tools"), "names what is served: {err}");
    assert!(
        err.contains("\"nope\"") && !err.contains("pool"),
        "the template is refused by name (not the head start's pool): {err}"
    );
}

#[test]
fn a_registered_process_template_is_listed_and_runs_with_its_path() {
    let home = tempfile::tempdir().unwrap();
    // The directory of this host's python3, then the usual ones.
    let python_dir = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .find(|d| Path::new(d).join("python3").is_file())
        .expect("python3 on PATH")
        .to_owned();
    let path = format!("{python_dir}:/usr/bin:/bin");
    let path = path.as_str();
    std::fs::write(
        home.path().join("templates.json"),
        format!(r#"{{"process": {{"host-py": "{path}"}}}}"#),
    )
    .unwrap();
    let list = listed(home.path());
    let mine = template(&list, "process", "host-py").expect("host-py listed");
    assert_eq!(mine["available"], true, "{mine}");
    assert_eq!(mine["identity"]["facts"]["PATH"], path);
    let out = crownest(home.path())
        .args(["run", "--template", "host-py"])
        .arg(sample_repo())
        .args(["--", "sh", "-c", "echo \"$PATH\""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{path}\n"));
    // A PATH entry that is not absolute is refused, naming the file.
    std::fs::write(
        home.path().join("templates.json"),
        r#"{"process": {"bad": "bin:/usr/bin"}}"#,
    )
    .unwrap();
    let out = crownest(home.path()).arg("templates").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("templates.json"));
}

/// The sha256 `modules.lock` pins for CPython.
const CPYTHON_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";

/// The pinned CPython module, fetched and verified by the repository's script (idempotent;
/// fails the test when it cannot get it).
fn cpython_module() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(repo.join("scripts/fetch-wasm-modules.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the wasm modules are needed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = std::env::var_os("CROWNEST_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/crownest"),
            PathBuf::from,
        );
    let python = cache.join("wasm/python-3.12.0.wasm");
    assert!(python.is_file(), "{}", python.display());
    python
}

/// `<home>/templates.json` registering `my-py` (a copy of the pinned CPython under another
/// name) and `bad-py` (the same copy with one byte changed), both pinned to CPython's
/// digest. Returns the two module paths.
fn register_wasm_templates(home: &Path, modules: &Path) -> (PathBuf, PathBuf) {
    let mine = modules.join("my-python.wasm");
    let tampered = modules.join("tampered.wasm");
    std::fs::copy(cpython_module(), &mine).unwrap();
    let mut bytes = std::fs::read(&mine).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&tampered, bytes).unwrap();
    let entry =
        |path: &Path| serde_json::json!({"python": {"path": path, "sha256": CPYTHON_SHA256}});
    std::fs::write(
        home.join("templates.json"),
        serde_json::to_vec(&serde_json::json!({
            "wasm": {"my-py": entry(&mine), "bad-py": entry(&tampered)}
        }))
        .unwrap(),
    )
    .unwrap();
    (mine, tampered)
}

#[test]
fn a_registered_wasm_template_is_listed_runs_and_names_its_module_in_the_evidence() {
    let home = tempfile::tempdir().unwrap();
    let modules = tempfile::tempdir().unwrap();
    let (mine, tampered) = register_wasm_templates(home.path(), modules.path());

    let list = listed(home.path());
    let t = template(&list, "wasm", "my-py").expect("my-py listed");
    assert_eq!(t["available"], true, "{t}");
    assert_eq!(t["identity"]["facts"]["python.sha256"], CPYTHON_SHA256);
    assert_eq!(t["identity"]["facts"]["python.module"], "my-python.wasm");
    let bad = template(&list, "wasm", "bad-py").expect("bad-py listed");
    assert_eq!(bad["available"], false);
    let why = bad["reason"].as_str().unwrap();
    assert!(
        why.contains(&tampered.display().to_string()) && why.contains(CPYTHON_SHA256),
        "names the file and the digest expected: {why}"
    );
    assert_eq!(
        template(&list, "wasm", "python-node").unwrap()["available"],
        true,
        "the built-in template is unaffected"
    );
    let out = crownest(home.path()).arg("templates").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("wasm") && l.contains("my-py"))
        .unwrap_or_else(|| panic!("a my-py line: {text}"));
    assert!(
        line.contains("python3 3.12.0") && line.contains("my-python.wasm sha256:e5dc5a398b07"),
        "{line}"
    );

    let out = crownest(home.path())
        .args(["run", "--backend", "wasm", "--template", "my-py"])
        .arg(sample_repo())
        .args(["--", "python3", "main.py"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from Python 3.12.0"),
        "{out:?}"
    );
    let runs = crownest(home.path())
        .args(["runs", "--json"])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(
        String::from_utf8_lossy(&runs.stdout)
            .lines()
            .next()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let id = run["id"].as_str().unwrap();
    let evidence = crownest(home.path())
        .args(["evidence", id])
        .output()
        .unwrap();
    let evidence: Value = serde_json::from_slice(&evidence.stdout).unwrap();
    assert_eq!(evidence["template"]["name"], "my-py");
    let facts = &evidence["template"]["identity"]["facts"];
    assert_eq!(facts["python.sha256"], CPYTHON_SHA256);
    assert!(
        facts["python3.path"]
            .as_str()
            .unwrap()
            .starts_with(&mine.display().to_string()),
        "{facts}"
    );
    crownest(home.path()).args(["verify", id]).assert().code(0);

    // A run on the tampered template is refused at create: exit 2, nothing stored.
    let out = crownest(home.path())
        .args(["run", "--backend", "wasm", "--template", "bad-py"])
        .arg(sample_repo())
        .args(["--", "python3", "main.py"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unavailable") && err.contains(&tampered.display().to_string()),
        "{err}"
    );
    let runs = crownest(home.path())
        .args(["runs", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&runs.stdout).lines().count(), 1);
}

/// Through `crownest serve`: a run on the tampered template is HTTP 400 at create, field
/// `template`, with the reason naming the file.
#[test]
fn a_tampered_wasm_template_is_400_through_the_server() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let home = tempfile::tempdir().unwrap();
    let modules = tempfile::tempdir().unwrap();
    let (_, tampered) = register_wasm_templates(home.path(), modules.path());
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin("crownest"))
        .env_remove("CROWNEST_HOME")
        .env_remove("CROWNEST_TOKEN")
        .arg("--home")
        .arg(home.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--backends", "wasm"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let (mut token, mut addr) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("token: ") {
            token = t.trim().to_owned();
        }
        if let Some(url) = line.strip_prefix("listening on ") {
            addr = url.trim().trim_start_matches("http://").to_owned();
            break;
        }
    }
    // Keep draining so the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.for_each(drop));
    assert!(!addr.is_empty() && !token.is_empty(), "serve did not start");
    let post = |body: &Value| -> (u16, Value) {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /v1/runs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    };
    let (status, body) = post(&serde_json::json!({
        "command": ["python3", "-c", "print(1)"],
        "backend": "wasm",
        "template": "bad-py",
    }));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "template", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&tampered.display().to_string()), "{body}");
    // The registered template that matches is accepted.
    let (status, body) = post(&serde_json::json!({
        "command": ["python3", "-c", "print(1)"],
        "backend": "wasm",
        "template": "my-py",
    }));
    assert_eq!(status, 201, "{body}");
    server.kill().unwrap();
    server.wait().unwrap();
    drain.join().unwrap();
}
