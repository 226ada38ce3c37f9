//! A real pytest session on CPython-on-WASI, run the way docs/images.md and the crate docs
//! say: `python3 -m pytest -p no:cacheprovider -p no:faulthandler --capture=sys`. pytest
//! and its pure-Python dependencies are the wheels pinned in `scripts/fetch-wasm-pytest.sh`
//! (run here and by `scripts/fetch-wasm-modules.sh`), unpacked into the workspace next to
//! the project and found through a relative `PYTHONPATH`. Without the packages (no network,
//! no pip) the test fails, like every test of this crate without its modules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crownest_core::archive::ExtractPolicy;
use crownest_core::run::RunOwner;
use crownest_core::testing::tar_gz;
use crownest_core::{
    ExecRequest, ExitStatus, Limits, Network, OutputStream, RunId, Sandbox, SandboxBackend,
    SandboxSpec,
};

/// The pytest version pinned in `scripts/fetch-wasm-pytest.sh` (and named in the docs).
const PYTEST_VERSION: &str = "9.2.0";

/// Runs `scripts/fetch-wasm-pytest.sh` (idempotent; ~0.1 s when cached) and returns the
/// site-packages style directory it prints.
fn pytest_packages() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let stdout = common::fetch("fetch-wasm-pytest.sh", "the pytest test needs its packages");
        let dir = PathBuf::from(stdout.lines().last().expect("the script prints a path"));
        assert!(
            dir.join("pytest/__init__.py").is_file(),
            "{} holds no pytest",
            dir.display()
        );
        dir
    })
    .clone()
}

/// Every file under `dir` (no `__pycache__`), as (`prefix/relative path`, contents).
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().into_string().unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            if name != "__pycache__" {
                files_under(&path, &format!("{prefix}/{name}"), out);
            }
        } else {
            out.push((format!("{prefix}/{name}"), std::fs::read(&path).unwrap()));
        }
    }
}

/// One passing test, one failing test, a fixture with a parametrized test (3 cases), and
/// `capsys` / `caplog`: 1 failed, 5 passed.
const TEST_MODULE: &str = r#"import logging

import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert [1, 2, 3] == [1, 2, 4]


@pytest.fixture
def numbers():
    return {1, 2, 3}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_parametrized_with_a_fixture(numbers, n):
    assert n in numbers


def test_capsys_and_caplog(capsys, caplog):
    print("to stdout")
    logging.getLogger("sample").warning("to the log")
    assert capsys.readouterr().out == "to stdout\n"
    assert "to the log" in caplog.text
"#;

/// `tmp_path` and `tmpdir`, which the docs say fail (they need `os.getuid`).
const TMP_PATH_MODULE: &str = r#"def test_tmp_path(tmp_path):
    pass


def test_tmpdir(tmpdir):
    pass
"#;

/// Runs `python3 -m pytest FLAGS -q` in `cwd` with `PYTHONPATH=../site-packages`:
/// (status, stdout, stderr).
async fn pytest(
    sandbox: &Arc<dyn Sandbox>,
    cwd: &str,
    flags: &[&str],
) -> (ExitStatus, String, String) {
    let mut argv = vec!["python3", "-m", "pytest"];
    argv.extend_from_slice(flags);
    argv.push("-q");
    let mut req = ExecRequest::new(argv);
    req.cwd = cwd.into();
    req.env
        .insert("PYTHONPATH".into(), "../site-packages".into());
    let sink = common::RecordingSink::default();
    let outcome = sandbox.exec(&req, &sink).await.unwrap();
    (
        outcome.status,
        sink.text(OutputStream::Stdout),
        sink.text(OutputStream::Stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytest_runs_with_the_documented_flags_and_each_flag_is_needed() {
    let mut files = Vec::new();
    files_under(&pytest_packages(), "site-packages", &mut files);
    files.push((
        "proj/test_sample.py".into(),
        TEST_MODULE.as_bytes().to_vec(),
    ));
    files.push((
        "tmp/test_tmp.py".into(),
        TMP_PATH_MODULE.as_bytes().to_vec(),
    ));
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice(), 0o644))
        .collect();
    let archive = tar_gz(&entries);
    assert!(!archive.is_empty(), "the workspace archive was built");

    let sandbox: Arc<dyn Sandbox> = Arc::from(
        common::backend()
            .create(&SandboxSpec {
                run_id: RunId::new(),
                instance: "wasm-pytest-tests".into(),
                owner: RunOwner::current("wasm-pytest-tests"),
                template: "python-node".into(),
                limits: Limits::default(),
                network: Network::None,
            })
            .await
            .unwrap(),
    );
    sandbox
        .materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive.to_vec()))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap();

    // The documented command: the session runs, one test fails, pytest exits 1.
    let documented = [
        "-p",
        "no:cacheprovider",
        "-p",
        "no:faulthandler",
        "--capture=sys",
    ];
    let (status, out, err) = pytest(&sandbox, "proj", &documented).await;
    assert_eq!(status, ExitStatus::Exited(1), "{out}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("1 failed, 5 passed in "),
        "summary line: {summary:?}\n{out}\n{err}"
    );
    assert!(
        out.contains("FAILED test_sample.py::test_fails - assert [1, 2, 3] == [1, 2, 4]"),
        "the failure is reported with pytest's assertion rewriting:\n{out}"
    );
    let (status, out, err) = pytest(&sandbox, "proj", &["--version"]).await;
    assert_eq!(status, ExitStatus::Exited(0), "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains(&format!("pytest {PYTEST_VERSION}")),
        "the pinned pytest runs: {out}{err}"
    );

    // Each documented flag is needed, not just sufficient. Without `--capture=sys`, fd
    // capture's `os.dup` fails before any test is collected.
    let (status, out, err) = pytest(
        &sandbox,
        "proj",
        &["-p", "no:cacheprovider", "-p", "no:faulthandler"],
    )
    .await;
    assert_eq!(status, ExitStatus::Exited(1), "{out}\n{err}");
    assert!(!out.contains("passed"), "no test ran:\n{out}");
    assert!(
        err.contains("os.dup(targetfd)") && err.contains("OSError: [Errno 58] Not supported"),
        "fd capture fails on os.dup:\n{err}"
    );
    // Without `-p no:faulthandler`: an internal error (exit 3), `os.dup` of stderr again.
    let (status, out, err) = pytest(
        &sandbox,
        "proj",
        &["-p", "no:cacheprovider", "--capture=sys"],
    )
    .await;
    assert_eq!(status, ExitStatus::Exited(3), "{out}\n{err}");
    let both = format!("{out}{err}");
    assert!(
        both.contains("faulthandler.py")
            && both.contains("os.dup(stderr_fileno)")
            && both.contains("OSError: [Errno 58] Not supported"),
        "faulthandler fails on os.dup:\n{both}"
    );
    // Without `-p no:cacheprovider`: the tests run, then writing the cache needs os.umask
    // and the session ends in a traceback instead of the summary.
    let (status, out, err) = pytest(
        &sandbox,
        "proj",
        &["-p", "no:faulthandler", "--capture=sys"],
    )
    .await;
    assert_eq!(status, ExitStatus::Exited(1), "{out}\n{err}");
    assert!(!out.contains("passed"), "no summary:\n{out}");
    assert!(
        err.contains("AttributeError: module 'os' has no attribute 'umask'"),
        "the cache provider fails on os.umask:\n{err}"
    );

    // tmp_path and tmpdir fail at setup even with the documented flags: no os.getuid.
    let (status, out, err) = pytest(&sandbox, "tmp", &documented).await;
    assert_eq!(status, ExitStatus::Exited(1), "{out}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("2 errors in "),
        "summary line: {summary:?}\n{out}\n{err}"
    );
    for test in ["test_tmp_path", "test_tmpdir"] {
        assert!(out.contains(&format!("ERROR test_tmp.py::{test}")), "{out}");
    }
    assert!(
        out.contains("AttributeError: module 'os' has no attribute 'getuid'"),
        "{out}"
    );
    sandbox.destroy().await.unwrap();
}
