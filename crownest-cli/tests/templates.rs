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
        "{",
    ] {
        std::fs::write(home.path().join("templates.json"), bad).unwrap();
        let out = crownest(home.path()).arg("templates").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("templates.json"), "{bad}: {err}");
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
