//! Threat model: **another local user**. An unprivileged user (`nobody`, via `setpriv`) who
//! can write to a shared directory (like `/dev/shm` or `/tmp`) tries to make a CrowNest run
//! read or write a directory only root may touch, by pre-creating the work root of a
//! host-directory backend, planting a symlink in its place, or racing our own creation of it.
//!
//! For every host-directory backend (process, WASI, Docker staging) the run must either
//! proceed safely (its artifact is its own file; the root-only directory is untouched) or
//! fail with a clear error naming the unsafe root. These tests need root (to act as another
//! user); as any other user they say so and return.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crownest::docker::{DockerBackend, DockerConfig};
use crownest::process::{ProcessBackend, ProcessConfig};
use crownest::wasm::{WasmBackend, WasmConfig};
use crownest::{
    ArtifactRequest, EngineConfig, Error, MemoryStore, RunRecord, RunSpec, RunStatus,
    SandboxBackend, WorkspaceRuns,
};

const NOBODY: u32 = 65534;
const SECRET: &[u8] = b"root-only secret\n";
const MINE: &[u8] = b"the run's own input\n";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip(why: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("skipped: {why}\n").as_bytes(),
    );
}

/// A root-only directory holding a secret, and a sticky, world-writable "shared" directory
/// (like `/dev/shm`) in which the attacker and CrowNest meet.
struct Scene {
    _tmp: tempfile::TempDir,
    secret_dir: PathBuf,
    shared: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("crownest-attack-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret_dir = tmp.path().join("secret");
        std::fs::create_dir(&secret_dir).unwrap();
        std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(secret_dir.join("out.txt"), SECRET).unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Self {
            _tmp: tmp,
            secret_dir,
            shared,
        }
    }

    /// The per-user directory a default root would use (`/dev/shm/crownest-<uid>`).
    fn user_dir(&self) -> PathBuf {
        self.shared.join("crownest-0")
    }

    /// Asserts the root-only directory holds exactly what it held at the start.
    fn assert_secret_untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(&self.secret_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["out.txt".to_owned()],
            "something was written into the root-only directory"
        );
        assert_eq!(
            std::fs::read(self.secret_dir.join("out.txt")).unwrap(),
            SECRET
        );
        let meta = std::fs::metadata(&self.secret_dir).unwrap();
        assert_eq!(meta.uid(), 0);
        assert_eq!(meta.mode() & 0o777, 0o700);
    }
}

/// Runs `script` (Python) as `nobody`, with `argv[1..]` = `args`.
fn as_nobody(script: &str, args: &[&Path]) -> Child {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &NOBODY.to_string(),
        "--regid",
        &NOBODY.to_string(),
        "--clear-groups",
        "--",
        // Debian's interpreter: one under root's home (pyenv) is not executable by nobody.
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    cmd.args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().expect("setpriv runs")
}

fn as_nobody_wait(script: &str, args: &[&Path]) {
    let status = as_nobody(script, args).wait().unwrap();
    assert!(status.success(), "the attacker's set-up failed: {status}");
}

/// Pre-creates the per-user directory, world-writable, and the backend's root inside it.
const PRECREATE: &str = r#"
import os, sys
user, name = sys.argv[1], sys.argv[2]
os.mkdir(user, 0o777); os.chmod(user, 0o777)
os.mkdir(os.path.join(user, name), 0o777); os.chmod(os.path.join(user, name), 0o777)
"#;

/// Plants the per-user directory as a symlink to the root-only directory.
const PLANT_SYMLINK: &str = r#"
import os, sys
os.symlink(sys.argv[2], sys.argv[1])
"#;

/// For a few seconds: tries to win the creation of the per-user directory (then opens it
/// to everyone), and swaps every entry it can reach for a symlink to the secret directory.
const RACE: &str = r#"
import os, sys, time
user, secret = sys.argv[1], sys.argv[2]
end = time.time() + float(sys.argv[3])
loops = 0
while time.time() < end:
    loops += 1
    try:
        os.mkdir(user, 0o777); os.chmod(user, 0o777)
    except OSError:
        pass
    for top in (user,):
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for n in names:
            p = os.path.join(top, n)
            try:
                os.chmod(p, 0o777)
            except OSError:
                pass
            try:
                for m in os.listdir(p):
                    q = os.path.join(p, m)
                    os.rename(q, q + ".moved")
                    os.symlink(secret, q)
            except OSError:
                pass
print("loops", loops)
"#;

enum Kind {
    Process,
    Wasm,
    Docker,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Wasm => "wasm",
            Kind::Docker => "docker",
        }
    }

    fn command(&self) -> Vec<String> {
        let argv: &[&str] = match self {
            Kind::Wasm => &[
                "python3",
                "-c",
                "open('out.txt','wb').write(open('in.txt','rb').read()); open('made-by-guest','w').write('x')",
            ],
            _ => &["sh", "-c", "cp in.txt out.txt && echo x > made-by-guest"],
        };
        argv.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The backend with its root (or staging dir) at `root`, or the error its construction
    /// gave; `None` when Docker is not available and not required.
    async fn backend(&self, root: &Path) -> Option<Result<Arc<dyn SandboxBackend>, Error>> {
        Some(match self {
            Kind::Process => ProcessBackend::new(ProcessConfig::with_root(root))
                .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>),
            Kind::Wasm => WasmBackend::new(WasmConfig::default().with_workspace_root(root))
                .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>),
            Kind::Docker => {
                let b = match DockerBackend::connect(DockerConfig::default().with_work_dir(root))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => return docker_missing(&format!("no Docker engine: {}", e.chain())),
                };
                match b.templates().await {
                    Ok(t) if t.iter().any(|t| t.available) => {}
                    _ => return docker_missing("the crownest/python-node image is missing"),
                }
                Ok(Arc::new(b) as Arc<dyn SandboxBackend>)
            }
        })
    }
}

fn docker_missing(reason: &str) -> Option<Result<Arc<dyn SandboxBackend>, Error>> {
    if std::env::var("CROWNEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("CROWNEST_REQUIRE_DOCKER=1 but {reason}");
    }
    skip(reason);
    None
}

/// One run of `kind` with its root at `root`: `Ok(record)` when the backend could be made
/// (the run may still have failed), `Err` when making the backend was refused.
async fn run(kind: &Kind, root: &Path) -> Option<Result<RunRecord, Error>> {
    let backend = match kind.backend(root).await? {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
        .backend(backend)
        .config(EngineConfig::default())
        .without_recovery()
        .open()
        .await
        .unwrap();
    let mut spec = RunSpec::new(kind.command()).with_backend(kind.name());
    spec.artifacts = vec![ArtifactRequest {
        path: "out.txt".into(),
        required: false,
    }];
    let run = engine.create(spec).await.unwrap();
    let archive = crownest::testing::tar_gz(&[("in.txt", MINE, 0o644)]);
    engine
        .upload_archive(
            &run.id,
            &crownest::testing::descriptor_of(&archive),
            archive,
        )
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(180), engine.wait(&run.id))
        .await
        .expect("the run ends")
        .unwrap();
    // Whatever it collected must be its own file, never the secret.
    for a in &done.artifacts {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut engine.open_artifact(&a.artifact_id).await.unwrap().1,
            &mut bytes,
        )
        .unwrap();
        assert_ne!(
            bytes,
            SECRET,
            "{}: the run collected the root-only file",
            kind.name()
        );
        assert_eq!(
            bytes,
            MINE,
            "{}: the artifact is not the run's own file",
            kind.name()
        );
    }
    Some(Ok(done))
}

fn failure_text(r: &Result<RunRecord, Error>) -> String {
    match r {
        Err(e) => e.chain(),
        Ok(rec) => rec
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_default(),
    }
}

/// The attacker pre-created the per-user directory and the root inside it: refused, naming
/// the directory the attacker owns.
async fn precreated_root_is_refused(kind: Kind) {
    if !is_root() {
        return skip("needs root to act as another user");
    }
    let scene = Scene::new();
    let user = scene.user_dir();
    as_nobody_wait(PRECREATE, &[&user, Path::new(kind.name())]);
    let Some(result) = run(&kind, &user.join(kind.name())).await else {
        return;
    };
    let text = failure_text(&result);
    assert!(
        matches!(&result, Err(Error::UnsafeWorkRoot { .. }))
            || matches!(&result, Ok(r) if r.status == RunStatus::Failed),
        "{}: a pre-created root must be refused, got {result:?}",
        kind.name()
    );
    assert!(
        text.contains("unsafe work root") && text.contains(&user.display().to_string()),
        "{}: the error must name the unsafe root: {text}",
        kind.name()
    );
    assert!(
        text.contains("uid 65534"),
        "{}: says who owns it: {text}",
        kind.name()
    );
    scene.assert_secret_untouched();
    // Nothing was made inside the attacker's directory either.
    assert_eq!(
        std::fs::read_dir(user.join(kind.name())).unwrap().count(),
        0,
        "{}: nothing may be created in a refused root",
        kind.name()
    );
}

/// The attacker planted the per-user directory as a symlink to a root-only directory.
async fn planted_symlink_is_refused(kind: Kind) {
    if !is_root() {
        return skip("needs root to act as another user");
    }
    let scene = Scene::new();
    let user = scene.user_dir();
    as_nobody_wait(PLANT_SYMLINK, &[&user, &scene.secret_dir]);
    let Some(result) = run(&kind, &user.join(kind.name())).await else {
        return;
    };
    let text = failure_text(&result);
    assert!(
        text.contains("unsafe work root") && text.contains("symlink"),
        "{}: a planted symlink must be refused: {result:?}",
        kind.name()
    );
    scene.assert_secret_untouched();
}

/// The attacker races our creation of the root and swaps what it can reach while runs go
/// on: every run either succeeds with its own artifact or fails naming the unsafe root.
async fn racing_attacker_gains_nothing(kind: Kind) {
    if !is_root() {
        return skip("needs root to act as another user");
    }
    let scene = Scene::new();
    let user = scene.user_dir();
    let mut attacker = as_nobody(RACE, &[&user, &scene.secret_dir, Path::new("6")]);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let Some(result) = run(&kind, &user.join(kind.name())).await else {
            let _ = attacker.kill();
            let _ = attacker.wait();
            return;
        };
        match &result {
            Ok(r) if r.status == RunStatus::Succeeded => {
                assert_eq!(r.artifacts.len(), 1, "{}: {r:?}", kind.name());
                outcomes.push("succeeded");
            }
            other => {
                let text = failure_text(other);
                assert!(
                    text.contains("unsafe work root"),
                    "{}: a run that does not succeed must fail naming the unsafe root: {other:?}",
                    kind.name()
                );
                outcomes.push("refused");
            }
        }
        scene.assert_secret_untouched();
    }
    let out = attacker.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.starts_with("loops ") && !out.trim().ends_with(" 0"),
        "the attacker must really have run: {out:?}"
    );
    scene.assert_secret_untouched();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("{}: {outcomes:?}\n", kind.name()).as_bytes(),
    );
}

macro_rules! attacker_cases {
    ($($name:ident => $kind:expr),* $(,)?) => {
        mod precreated_root { use super::*; $(#[tokio::test(flavor = "multi_thread")] async fn $name() { precreated_root_is_refused($kind).await } )* }
        mod planted_symlink { use super::*; $(#[tokio::test(flavor = "multi_thread")] async fn $name() { planted_symlink_is_refused($kind).await } )* }
        mod racing_attacker { use super::*; $(#[tokio::test(flavor = "multi_thread")] async fn $name() { racing_attacker_gains_nothing($kind).await } )* }
    };
}

attacker_cases! {
    process => Kind::Process,
    wasm => Kind::Wasm,
    docker => Kind::Docker,
}
