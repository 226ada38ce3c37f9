//! Templates a user registers in the home, and `crownest templates`.
//!
//! `<home>/templates.json` names extra templates per backend: Docker (a name → an image
//! built or loaded on this host; nothing is pulled), process (a name → the `PATH` its
//! commands get, where its `python3` and `node` are found) and wasm (a name → per
//! interpreter a WASI module file and the sha256 it must have):
//!
//! ```json
//! { "docker": { "my-tools": "registry.example/my-tools:1.4" },
//!   "process": { "py312": "/opt/py312/bin:/usr/bin:/bin" },
//!   "wasm": { "my-py": { "python": { "path": "/opt/wasm/python.wasm", "sha256": "e5dc..." } } } }
//! ```
//!
//! A missing file means none. An unreadable or malformed file, an unknown key, or a bad
//! name is a usage error naming the file (and the entry): a typo must not silently drop a
//! template. A registered name may replace a built-in one (`python-node` → another image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crownest_core::{Sha256Digest, TemplateInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::TemplatesArgs;
use crate::connection::Target;
use crate::exit::{Exit, usage};
use crate::home;

/// File name of the registry in the home.
pub(crate) const FILE: &str = "templates.json";

/// What `<home>/templates.json` registers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    /// Docker templates: name → image reference.
    pub(crate) docker: BTreeMap<String, String>,
    /// Process templates: name → the `PATH` of their commands (its `python3` required, its
    /// `node` optional).
    pub(crate) process: BTreeMap<String, String>,
    /// WASI templates: name → interpreter (`python`, `node`) → its module.
    pub(crate) wasm: BTreeMap<String, WasmModules>,
}

/// The file's shape; the `wasm` entries are checked one by one, so an error names the
/// entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    docker: BTreeMap<String, String>,
    #[serde(default)]
    process: BTreeMap<String, String>,
    #[serde(default)]
    wasm: BTreeMap<String, Value>,
}

/// An interpreter a WASI template gives a module for (its key in the registry).
#[cfg_attr(not(feature = "wasm"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WasmInterpreter {
    /// `"python"`: what `python`, `python3`, `python3.12` run (a CPython build for WASI).
    Python,
    /// `"node"`: what `node` runs.
    Node,
}

impl WasmInterpreter {
    const ALL: [(&'static str, Self); 2] = [("python", Self::Python), ("node", Self::Node)];
}

/// The modules of one registered WASI template, by interpreter (at least one).
pub(crate) type WasmModules = BTreeMap<WasmInterpreter, WasmModuleEntry>;

/// One registered WASI module: an absolute path and the sha256 it must have.
#[cfg_attr(not(feature = "wasm"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WasmModuleEntry {
    pub(crate) path: PathBuf,
    pub(crate) sha256: Sha256Digest,
}

/// Checks one `wasm` entry: `{"python": {"path": ABS, "sha256": HEX64}, "node": {...}}`,
/// at least one interpreter, nothing else. `Err` says what is wrong, without the entry's
/// name (the caller adds it).
fn wasm_entry(value: &Value) -> Result<WasmModules, String> {
    let expected = "expected an object with \"python\" and/or \"node\", each {\"path\": ABSOLUTE PATH, \"sha256\": 64 HEX DIGITS}";
    let Value::Object(map) = value else {
        return Err(expected.to_owned());
    };
    let mut out = BTreeMap::new();
    for (key, module) in map {
        let Some((_, interpreter)) = WasmInterpreter::ALL.iter().find(|(k, _)| k == key) else {
            return Err(format!(
                "unknown interpreter {key:?} (expected \"python\" or \"node\")"
            ));
        };
        let Value::Object(fields) = module else {
            return Err(format!("{key}: {expected}"));
        };
        if let Some(other) = fields.keys().find(|k| *k != "path" && *k != "sha256") {
            return Err(format!(
                "{key}: unknown key {other:?} (expected \"path\" and \"sha256\")"
            ));
        }
        let text = |field: &str| -> Result<&str, String> {
            fields
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{key}: {field:?} is required, as a string"))
        };
        let path = PathBuf::from(text("path")?);
        if !path.is_absolute() {
            return Err(format!("{key}: path {:?} must be absolute", path.display()));
        }
        let sha256 = text("sha256")?;
        let sha256 = Sha256Digest::parse(sha256)
            .map_err(|_| format!("{key}: sha256 {sha256:?} is not 64 hex digits"))?;
        out.insert(*interpreter, WasmModuleEntry { path, sha256 });
    }
    if out.is_empty() {
        return Err(format!("registers no module: {expected}"));
    }
    Ok(out)
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
        let file: RegistryFile = serde_json::from_slice(&bytes).map_err(|e| {
            usage(format!(
                "{} is not a valid template registry: {e}",
                path.display()
            ))
        })?;
        let mut parsed = Self {
            docker: file.docker,
            process: file.process,
            wasm: BTreeMap::new(),
        };
        for (name, value) in &file.wasm {
            if !valid_name(name) {
                return Err(usage(format!(
                    "{}: wasm template name {name:?} must match [A-Za-z0-9._-]+",
                    path.display()
                )));
            }
            let modules = wasm_entry(value).map_err(|why| {
                usage(format!("{}: wasm template {name:?}: {why}", path.display()))
            })?;
            parsed.wasm.insert(name.clone(), modules);
        }
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

/// `python3 3.14.8, node v24.21.0, image crownest/python-node:latest` from the identity
/// (a WASI template adds its module files and digests: `python-3.12.0.wasm sha256:e5dc5a398b07`).
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
    // WASI modules: the file and the start of the digest it was verified against.
    for prefix in ["python", "node"] {
        let module = id.facts.get(&format!("{prefix}.module"));
        let sha256 = id.facts.get(&format!("{prefix}.sha256"));
        if let (Some(module), Some(sha256)) = (module, sha256) {
            parts.push(format!(
                "{module} sha256:{}",
                &sha256[..sha256.len().min(12)]
            ));
        }
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

    const SHA: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";

    #[test]
    fn reads_wasm_templates() {
        let r = load(&format!(
            r#"{{"wasm": {{"my-py": {{"python": {{"path": "/opt/python.wasm", "sha256": "{}"}}}},
                          "both": {{"python": {{"path": "/a/p.wasm", "sha256": "{SHA}"}},
                                    "node": {{"path": "/a/q.wasm", "sha256": "{SHA}"}}}}}}}}"#,
            SHA.to_ascii_uppercase()
        ))
        .unwrap();
        let mine = &r.wasm["my-py"];
        assert_eq!(mine.len(), 1);
        let python = &mine[&WasmInterpreter::Python];
        assert_eq!(python.path, Path::new("/opt/python.wasm"));
        assert_eq!(python.sha256.as_str(), SHA, "stored lower case");
        assert_eq!(r.wasm["both"].len(), 2);
    }

    /// Every malformed `wasm` entry is a usage error (exit 2) naming the file, the
    /// template and what is wrong with it.
    #[test]
    fn a_bad_wasm_entry_is_a_usage_error_naming_the_entry() {
        let module = |path: &str, sha: &str| format!(r#"{{"path": "{path}", "sha256": "{sha}"}}"#);
        let good = module("/opt/p.wasm", SHA);
        for (entry, says) in [
            (
                format!(r#"{{"ruby": {good}}}"#),
                r#"unknown interpreter "ruby""#,
            ),
            ("{}".to_owned(), "registers no module"),
            (r#""/opt/p.wasm""#.to_owned(), "expected an object"),
            (
                r#"{"python": "/opt/p.wasm"}"#.to_owned(),
                "python: expected an object",
            ),
            (
                format!(r#"{{"python": {}}}"#, module("p.wasm", SHA)),
                r#"python: path "p.wasm" must be absolute"#,
            ),
            (
                format!(r#"{{"node": {}}}"#, module("/opt/q.wasm", "abc")),
                r#"node: sha256 "abc" is not 64 hex digits"#,
            ),
            (
                format!(r#"{{"node": {}}}"#, module("/opt/q.wasm", &"g".repeat(64))),
                "is not 64 hex digits",
            ),
            (
                r#"{"python": {"path": "/opt/p.wasm"}}"#.to_owned(),
                r#"python: "sha256" is required"#,
            ),
            (
                format!(r#"{{"python": {{"path": "/p.wasm", "sha256": "{SHA}", "size": 1}}}}"#),
                r#"python: unknown key "size""#,
            ),
        ] {
            let text = format!(r#"{{"wasm": {{"my-py": {entry}}}}}"#);
            let e = load(&text).unwrap_err();
            assert!(
                e.downcast_ref::<crate::exit::UsageError>().is_some(),
                "{text}: {e}"
            );
            let e = e.to_string();
            assert!(
                e.contains(FILE) && e.contains(r#"wasm template "my-py""#) && e.contains(says),
                "{text}: {e}"
            );
        }
        let e = load(&format!(r#"{{"wasm": {{"a b": {{"python": {good}}}}}}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"wasm template name "a b""#), "{e}");
    }
}
