//! The `python-node` template on host processes: the host's `python3` and `node`, resolved
//! on the template `PATH`.
//!
//! Decision: the template is **available when `python3` resolves**. A missing `node` is
//! recorded in the identity (`node.missing`) rather than making the template unavailable,
//! so Python-only work still runs on a host without Node; a command calling `node` then
//! fails as `spawn_failed` ("not found on PATH").

use std::path::Path;
use std::time::Duration;

use crownest_core::{TemplateIdentity, TemplateInfo};

use crate::version_cache;
use crate::workspace::resolve_program;

/// The one template name.
pub(crate) const PYTHON_NODE: &str = "python-node";

/// What `python-node` resolved to on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) info: TemplateInfo,
}

impl Resolved {
    pub(crate) fn identity(&self) -> TemplateIdentity {
        self.info.identity.clone().unwrap_or_default()
    }
}

/// One interpreter: its resolved path, canonical path and `--version` line (from the
/// per-boot cache in `cache_dir` when the same executable answered before, see
/// [`crate::version_cache`]).
async fn interpreter(
    name: &str,
    path_var: &str,
    cache_dir: &Path,
) -> Result<Vec<(String, String)>, String> {
    let path = resolve_program(name, path_var, Path::new("/"))?;
    let mut facts = vec![(format!("{name}.path"), path.display().to_string())];
    if let Ok(real) = std::fs::canonicalize(&path)
        && real != path
    {
        facts.push((format!("{name}.realPath"), real.display().to_string()));
    }
    let key = version_cache::Fingerprint::of(&path, path_var);
    if let Some(version) = key.as_ref().and_then(|k| version_cache::load(cache_dir, k)) {
        facts.push((format!("{name}.version"), version));
        return Ok(facts);
    }
    let version = ask_version(&path, path_var).await?;
    if let Some(key) = &key {
        version_cache::store(cache_dir, key, &version);
    }
    facts.push((format!("{name}.version"), version));
    Ok(facts)
}

/// `<path> --version`, with only `PATH` and `LANG` in its environment.
async fn ask_version(path: &Path, path_var: &str) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(path)
            .arg("--version")
            .env_clear()
            .env("PATH", path_var)
            .env("LANG", "C.UTF-8")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{} --version did not answer within 10 s", path.display()))?
    .map_err(|e| format!("{} --version failed: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version exited with {}",
            path.display(),
            out.status
        ));
    }
    // Python 2 printed its version on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Ok(String::from_utf8_lossy(&text).trim().to_owned())
}

/// Resolves the template `name` with `path_var` as `PATH` (both interpreters at once);
/// `cache_dir` holds the per-boot `--version` cache (the sandbox root).
pub(crate) async fn resolve(name: &str, path_var: &str, cache_dir: &Path) -> Resolved {
    let mut identity = TemplateIdentity::default().with("PATH", path_var);
    let (python, node) = tokio::join!(
        interpreter("python3", path_var, cache_dir),
        interpreter("node", path_var, cache_dir)
    );
    let reason = match &python {
        Ok(facts) => {
            for (k, v) in facts {
                identity = identity.with(k.clone(), v.clone());
            }
            None
        }
        Err(e) => Some(format!("python3 is required by {name}: {e}")),
    };
    match node {
        Ok(facts) => {
            for (k, v) in facts {
                identity = identity.with(k, v);
            }
        }
        Err(e) => identity = identity.with("node.missing", e),
    }
    Resolved {
        info: TemplateInfo {
            name: name.to_owned(),
            available: reason.is_none(),
            identity: reason.is_none().then_some(identity),
            reason,
        },
    }
}
