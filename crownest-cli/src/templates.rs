//! Templates a user registers in the home, and `crownest templates`.
//!
//! `<home>/templates.json` names extra templates per backend: Docker (a name → an image
//! built or loaded on this host; nothing is pulled) and process (a name → the `PATH` its
//! commands get, where its `python3` and `node` are found):
//!
//! ```json
//! { "docker": { "my-tools": "registry.example/my-tools:1.4" },
//!   "process": { "py312": "/opt/py312/bin:/usr/bin:/bin" } }
//! ```
//!
//! A missing file means none. An unreadable or malformed file, an unknown key, or a bad
//! name is a usage error naming the file: a typo must not silently drop a template. A
//! registered name may replace a built-in one (`python-node` → another image).

use std::collections::BTreeMap;
use std::path::Path;

use crownest_core::TemplateInfo;
use serde::{Deserialize, Serialize};

use crate::cli::TemplatesArgs;
use crate::connection::Target;
use crate::exit::{Exit, usage};
use crate::home;

/// File name of the registry in the home.
pub(crate) const FILE: &str = "templates.json";

/// What `<home>/templates.json` registers.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registered {
    /// Docker templates: name → image reference.
    #[serde(default)]
    pub(crate) docker: BTreeMap<String, String>,
    /// Process templates: name → the `PATH` of their commands (its `python3` required, its
    /// `node` optional).
    #[serde(default)]
    pub(crate) process: BTreeMap<String, String>,
}

impl Registered {
    /// Reads `<home>/templates.json` (none when it does not exist).
    pub(crate) fn load(home: &Path) -> anyhow::Result<Self> {
        let path = home.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(usage(format!("cannot read {}: {e}", path.display()))),
        };
        let parsed: Self = serde_json::from_slice(&bytes).map_err(|e| {
            usage(format!(
                "{} is not a valid template registry: {e}",
                path.display()
            ))
        })?;
        for (name, path) in &parsed.process {
            if !valid_name(name) {
                return Err(usage(format!(
                    "{}: template name {name:?} must match [A-Za-z0-9._-]+",
                    path_of(home)
                )));
            }
            if path.split(':').any(|d| !d.starts_with('/')) {
                return Err(usage(format!(
                    "{}: template {name:?} needs a PATH of absolute directories, got {path:?}",
                    path_of(home)
                )));
            }
        }
        for (name, image) in &parsed.docker {
            if !valid_name(name) {
                return Err(usage(format!(
                    "{}: template name {name:?} must match [A-Za-z0-9._-]+",
                    path.display()
                )));
            }
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return Err(usage(format!(
                    "{}: template {name:?} needs an image reference without spaces",
                    path.display()
                )));
            }
        }
        Ok(parsed)
    }
}

fn path_of(home: &Path) -> String {
    home.join(FILE).display().to_string()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    templates: Vec<TemplateInfo>,
}

/// `crownest templates`: every backend's templates, whether each is available (and why
/// not), and the versions it resolves to. Exit 0 when at least one is available.
pub(crate) async fn list(target: &Target, args: TemplatesArgs) -> anyhow::Result<Exit> {
    if target.server().is_some() {
        return Err(usage(
            "templates lists this host's backends; for a server, run `crownest doctor --server`",
        ));
    }
    let home_dir = target.home()?;
    let mut listed = Vec::new();
    for slot in home::backends(&home_dir, &home::PoolSettings::default()).await? {
        listed.push(match &slot.backend {
            Err(why) => Listed {
                backend: slot.name.to_owned(),
                reason: Some(why.clone()),
                templates: Vec::new(),
            },
            Ok(b) => match b.templates().await {
                Ok(templates) => Listed {
                    backend: slot.name.to_owned(),
                    reason: None,
                    templates,
                },
                Err(e) => Listed {
                    backend: slot.name.to_owned(),
                    reason: Some(format!("listing templates failed: {}", e.chain())),
                    templates: Vec::new(),
                },
            },
        });
    }
    let any = listed
        .iter()
        .any(|l| l.templates.iter().any(|t| t.available));
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&listed)? + "\n";
    } else {
        use std::fmt::Write as _;
        for l in &listed {
            if let Some(why) = &l.reason {
                let _ = writeln!(out, "{:<10} -            unusable: {why}", l.backend);
            }
            for t in &l.templates {
                let what = if t.available {
                    versions(t)
                } else {
                    format!(
                        "unavailable: {}",
                        t.reason.as_deref().unwrap_or("no reason given")
                    )
                };
                let _ = writeln!(out, "{:<10} {:<12} {what}", l.backend, t.name);
            }
        }
    }
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(if any { Exit::Success } else { Exit::Failure })
}

/// `python3 3.13.5, node v20.19.2, image crownest/python-node:latest` from the identity.
fn versions(t: &TemplateInfo) -> String {
    let Some(id) = &t.identity else {
        return "available".into();
    };
    let mut parts = Vec::new();
    for (key, label) in [
        ("python3.version", "python3"),
        ("node.version", "node"),
        ("quickjs.version", "quickjs"),
    ] {
        if let Some(v) = id.facts.get(key) {
            let v = v.trim_start_matches("Python ").to_owned();
            parts.push(format!("{label} {v}"));
        }
    }
    if let Some(image) = id.facts.get("image") {
        parts.push(format!("image {image}"));
    }
    if parts.is_empty() {
        "available".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> anyhow::Result<Registered> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), text).unwrap();
        Registered::load(dir.path())
    }

    #[test]
    fn reads_docker_templates_and_refuses_what_it_does_not_know() {
        assert_eq!(
            Registered::load(tempfile::tempdir().unwrap().path()).unwrap(),
            Registered::default()
        );
        let r = load(r#"{"docker": {"my-tools": "me/tools:1"}}"#).unwrap();
        assert_eq!(r.docker["my-tools"], "me/tools:1");
        for bad in [
            r#"{"dokcer": {}}"#,
            r#"{"docker": {"a b": "x"}}"#,
            r#"{"docker": {"ok": ""}}"#,
            r#"{"docker": {"ok": "has space"}}"#,
            "not json",
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains(FILE), "{bad}: {e}");
        }
    }
}
