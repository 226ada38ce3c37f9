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

/// One interpreter: its resolved path, canonical path and `--version` line.
async fn interpreter(name: &str, path_var: &str) -> Result<Vec<(String, String)>, String> {
    let root = Path::new("/");
    let path = resolve_program(name, path_var, root)?;
    let mut facts = vec![(format!("{name}.path"), path.display().to_string())];
    if let Ok(real) = std::fs::canonicalize(&path)
        && real != path
    {
        facts.push((format!("{name}.realPath"), real.display().to_string()));
    }
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&path)
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
    let version = String::from_utf8_lossy(&text).trim().to_owned();
    facts.push((format!("{name}.version"), version));
    Ok(facts)
}

/// Resolves the template `name` with `path_var` as `PATH`.
pub(crate) async fn resolve(name: &str, path_var: &str) -> Resolved {
    let mut identity = TemplateIdentity::default().with("PATH", path_var);
    let python = interpreter("python3", path_var).await;
    let node = interpreter("node", path_var).await;
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
