//! Templates: the built-in `python-node` (the modules pinned in `modules.lock`) and those a
//! host application registers ([`WasmTemplate`]: per interpreter, a module file and the
//! sha256 it pins), verified into the modules a sandbox runs, and their identity.
//!
//! A registered module is held to the same rule as a built-in one: its file must hash to
//! the pinned digest when the template is listed, when a sandbox is created, before each
//! command, and when it is compiled (the compiled-module cache is keyed by that digest).
//! A file that does not match is never run.

use std::path::{Path, PathBuf};

use crownest_core::{Error, Result, Sha256Digest, TemplateIdentity};

use crate::WasmConfig;
use crate::modules::{FETCH_SCRIPT, Interpreter, Mismatch, ModuleVerifier, Origin, VerifiedModule};

/// The built-in template (both modules of `modules.lock`).
pub(crate) const PYTHON_NODE: &str = "python-node";

/// One WASI module a host application registers: a file and the sha256 it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmModule {
    path: PathBuf,
    sha256: Sha256Digest,
}

impl WasmModule {
    /// The module at `path` (absolute: the backend's working directory is no anchor),
    /// pinned to `sha256`. A file that does not hash to it makes its template unavailable,
    /// naming the file and the digest expected, and is never compiled or run.
    ///
    /// A relative path is [`Error::InvalidSpec`] (field `path`); a malformed digest is
    /// refused by [`Sha256Digest::parse`] already.
    pub fn new(path: impl Into<PathBuf>, sha256: Sha256Digest) -> Result<Self> {
        let path = path.into();
        if !path.is_absolute() {
            return Err(Error::invalid(
                "path",
                format!(
                    "a WASI module is registered by its absolute path, not {:?}",
                    path.display()
                ),
            ));
        }
        Ok(Self { path, sha256 })
    }

    /// The module file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The digest it is pinned to.
    pub fn sha256(&self) -> &Sha256Digest {
        &self.sha256
    }
}

/// A template of the host application's own: per interpreter (`python` and/or `node`), the
/// module that `argv[0]` selects ([`Interpreter::from_argv0`]), registered with
/// [`WasmConfig::with_template`](crate::WasmConfig::with_template).
///
/// A `python` module is run as CPython is (the backend's `sitecustomize.py` on
/// `PYTHONPATH`, a read-only `/.crownest/python` preopen), so it should be a CPython build
/// for WASI preview 1; a `node` module gets only its arguments, environment and preopens. A
/// command whose `argv[0]` selects an interpreter the template lacks ends
/// `ExitStatus::SpawnFailed`, saying which modules the template has.
///
/// ```
/// use crownest_backend_wasm::{Interpreter, WasmConfig, WasmModule, WasmTemplate};
/// use crownest_core::Sha256Digest;
///
/// # fn demo() -> crownest_core::Result<()> {
/// let python = WasmModule::new(
///     "/opt/wasm/python-3.12.0.wasm",
///     Sha256Digest::parse("e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763")?,
/// )?;
/// let config = WasmConfig::default()
///     .with_template("my-py", WasmTemplate::new().with_module(Interpreter::Python, python));
/// # let _ = config;
/// # Ok(())
/// # }
/// # demo().unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasmTemplate {
    python: Option<WasmModule>,
    node: Option<WasmModule>,
}

impl WasmTemplate {
    /// A template with no module yet (listed as unavailable until it has one).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the module of `interpreter`.
    pub fn with_module(mut self, interpreter: Interpreter, module: WasmModule) -> Self {
        match interpreter {
            Interpreter::Python => self.python = Some(module),
            Interpreter::Node => self.node = Some(module),
        }
        self
    }

    /// The module of `interpreter`, if the template has one.
    pub fn module(&self, interpreter: Interpreter) -> Option<&WasmModule> {
        match interpreter {
            Interpreter::Python => self.python.as_ref(),
            Interpreter::Node => self.node.as_ref(),
        }
    }
}

/// The verified modules of one template: what its sandboxes run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateModules {
    /// The template's name.
    pub(crate) name: String,
    python: Option<VerifiedModule>,
    node: Option<VerifiedModule>,
}

impl TemplateModules {
    /// The module `interpreter` runs, if the template has one.
    pub(crate) fn get(&self, interpreter: Interpreter) -> Option<&VerifiedModule> {
        match interpreter {
            Interpreter::Python => self.python.as_ref(),
            Interpreter::Node => self.node.as_ref(),
        }
    }

    /// Every module, in [`Interpreter::ALL`] order.
    pub(crate) fn modules(&self) -> impl Iterator<Item = &VerifiedModule> {
        Interpreter::ALL.into_iter().filter_map(|i| self.get(i))
    }

    /// The template identity: module file, size, sha256, description and source per
    /// interpreter (the digest is the file's, checked, whoever registered it), plus the
    /// runtime. An interpreter the template lacks is recorded as missing.
    pub(crate) fn identity(&self) -> TemplateIdentity {
        let mut id = TemplateIdentity::default()
            .with("runtime", format!("wasmtime {}", crate::WASMTIME_VERSION))
            .with("wasi", "preview1");
        for i in Interpreter::ALL {
            // The keys every backend records for the interpreters: `python3.*`, `node.*`.
            let argv0 = match i {
                Interpreter::Python => "python3",
                Interpreter::Node => "node",
            };
            let p = i.fact_prefix();
            let Some(m) = self.get(i) else {
                id = id.with(
                    format!("{argv0}.missing"),
                    format!("template {} registers no {p} module", self.name),
                );
                continue;
            };
            let source = match &m.origin {
                Origin::Lock { requirement } => format!("PyPI wheel {requirement}"),
                Origin::Registered => "registered by the host application".to_owned(),
            };
            id = id
                .with(format!("{p}.module"), m.file())
                .with(format!("{p}.sha256"), m.sha256.clone())
                .with(format!("{p}.sizeBytes"), m.size.to_string())
                .with(format!("{p}.version"), m.description())
                .with(format!("{p}.source"), source)
                .with(
                    format!("{argv0}.path"),
                    format!("{} (WASI module)", m.path.display()),
                )
                .with(format!("{argv0}.version"), m.version_line());
        }
        id
    }
}

/// Every template `config` serves, sorted: `python-node` and the registered ones (a
/// registered `python-node` replaces the built-in one).
pub(crate) fn names(config: &WasmConfig) -> Vec<String> {
    let mut names: Vec<String> = config.templates.keys().cloned().collect();
    if !config.templates.contains_key(PYTHON_NODE) {
        names.push(PYTHON_NODE.to_owned());
        names.sort();
    }
    names
}

/// Verifies the modules of template `name`: `None` when `config` does not serve it,
/// `Err(reason)` (naming each file that is missing or does not match, and the digest
/// expected) when it is unavailable.
pub(crate) fn verify(
    config: &WasmConfig,
    verifier: &ModuleVerifier,
    name: &str,
) -> Option<std::result::Result<TemplateModules, String>> {
    if let Some(registered) = config.templates.get(name) {
        return Some(verify_registered(verifier, name, registered));
    }
    (name == PYTHON_NODE).then(|| {
        let python = verifier.verify_lock(&config.modules_dir, Interpreter::Python)?;
        let node = verifier.verify_lock(&config.modules_dir, Interpreter::Node)?;
        Ok(TemplateModules {
            name: PYTHON_NODE.to_owned(),
            python: Some(python),
            node: Some(node),
        })
    })
}

fn verify_registered(
    verifier: &ModuleVerifier,
    name: &str,
    template: &WasmTemplate,
) -> std::result::Result<TemplateModules, String> {
    let mut found = TemplateModules {
        name: name.to_owned(),
        python: None,
        node: None,
    };
    let mut problems = Vec::new();
    for i in Interpreter::ALL {
        let Some(m) = template.module(i) else {
            continue;
        };
        let (path, expected) = (m.path(), m.sha256().as_str());
        let pins = format!(
            "template {name:?} pins its {} module to sha256 {expected}",
            i.fact_prefix()
        );
        match verifier.check(path, expected, None) {
            Ok(size) => {
                let verified = VerifiedModule {
                    interpreter: i,
                    path: path.to_owned(),
                    sha256: expected.to_owned(),
                    size,
                    origin: Origin::Registered,
                };
                match i {
                    Interpreter::Python => found.python = Some(verified),
                    Interpreter::Node => found.node = Some(verified),
                }
            }
            Err(mismatch) => problems.push(match mismatch {
                Mismatch::Missing(e) => format!("{} is missing ({e}); {pins}", path.display()),
                Mismatch::NotAFile => format!("{} is not a regular file; {pins}", path.display()),
                // Registered modules pin no size.
                Mismatch::Size { actual } => {
                    format!("{} is {actual} bytes; {pins}", path.display())
                }
                Mismatch::Unreadable(e) => {
                    format!("reading {} failed ({e}); {pins}", path.display())
                }
                Mismatch::Digest { actual } => format!(
                    "{} has sha256 {actual}, but {pins}: a module that does not match is never run",
                    path.display()
                ),
            }),
        }
    }
    if template.python.is_none() && template.node.is_none() {
        problems.push(format!(
            "template {name:?} registers no module (python or node)"
        ));
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems.join("; "))
    }
}

/// Why the template `name` cannot run right now, as a sandbox says it before a command:
/// the built-in one names the script that fetches its modules.
pub(crate) fn unavailable(name: &str, reason: &str) -> String {
    if name == PYTHON_NODE {
        format!("{name} is unavailable: {reason} ({FETCH_SCRIPT})")
    } else {
        format!("template {name:?} is unavailable: {reason}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn digest(data: &[u8]) -> Sha256Digest {
        Sha256Digest::of(data)
    }

    #[test]
    fn a_module_is_registered_by_an_absolute_path() {
        let err = WasmModule::new("python.wasm", digest(b"x")).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { field, message } if field == "path" && message.contains("python.wasm")),
            "{err:?}"
        );
        let m = WasmModule::new("/opt/python.wasm", digest(b"x")).unwrap();
        assert_eq!(m.path(), Path::new("/opt/python.wasm"));
    }

    #[test]
    fn registered_modules_are_verified_by_digest_and_named_when_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.wasm");
        let bad = dir.path().join("bad.wasm");
        std::fs::write(&good, b"good module").unwrap();
        std::fs::write(&bad, b"tampered").unwrap();
        let v = ModuleVerifier::default();
        let mut config = WasmConfig::with_modules_dir(dir.path());
        config = config
            .with_template(
                "ok",
                WasmTemplate::new().with_module(
                    Interpreter::Node,
                    WasmModule::new(&good, digest(b"good module")).unwrap(),
                ),
            )
            .with_template(
                "tampered",
                WasmTemplate::new().with_module(
                    Interpreter::Python,
                    WasmModule::new(&bad, digest(b"original")).unwrap(),
                ),
            )
            .with_template("empty", WasmTemplate::new());
        assert_eq!(names(&config), ["empty", "ok", "python-node", "tampered"]);
        let ok = verify(&config, &v, "ok").unwrap().unwrap();
        assert!(ok.get(Interpreter::Python).is_none());
        let facts = ok.identity().facts;
        assert_eq!(facts["node.sha256"], digest(b"good module").as_str());
        assert_eq!(facts["node.sizeBytes"], "11");
        assert!(facts["python3.missing"].contains("ok registers no python"));

        let why = verify(&config, &v, "tampered").unwrap().unwrap_err();
        assert!(why.contains(&bad.display().to_string()), "{why}");
        assert!(why.contains(digest(b"original").as_str()), "{why}");
        assert!(why.contains(digest(b"tampered").as_str()), "{why}");
        let why = verify(&config, &v, "empty").unwrap().unwrap_err();
        assert!(why.contains("registers no module"), "{why}");
        assert!(verify(&config, &v, "nope").is_none());

        // A registered file that goes away makes its template unavailable, naming it.
        std::fs::remove_file(&good).unwrap();
        let why = verify(&config, &v, "ok").unwrap().unwrap_err();
        assert!(why.contains("good.wasm is missing"), "{why}");
    }
}
