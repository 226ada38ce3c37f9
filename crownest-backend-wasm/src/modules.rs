//! The WASI modules of the `python-node` template: which `argv[0]` selects which module, the
//! sha256 pins of `modules.lock` (compiled into this crate), and verification of the files
//! in [`crate::WasmConfig::modules_dir`].

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crownest_core::TemplateIdentity;
use sha2::{Digest as _, Sha256};

/// The lock file written by the team: `name file size sha256 requirement path-in-wheel`.
const LOCK: &str = include_str!("../modules.lock");

/// The script that fetches the modules (named in every "unavailable" reason).
pub(crate) const FETCH_SCRIPT: &str = "scripts/fetch-wasm-modules.sh";
/// The command that fetches them for a user of the `crownest` binary.
pub(crate) const SETUP_COMMAND: &str = "crownest setup wasm";

/// The template this backend offers.
pub(crate) const TEMPLATE: &str = "python-node";

/// The interpreter a command's `argv[0]` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interpreter {
    /// `python`, `python3`, `python3.12`: CPython 3.12 for wasm32-wasi.
    Python,
    /// `node`: QuickJS-NG for wasm32-wasi (not Node.js; see the crate docs).
    Node,
}

impl Interpreter {
    /// Both, in lock-file order.
    pub const ALL: [Interpreter; 2] = [Interpreter::Python, Interpreter::Node];

    /// The interpreter `argv[0]` names, if any. Only bare names are accepted: there is no
    /// PATH inside the sandbox.
    pub fn from_argv0(argv0: &str) -> Option<Self> {
        match argv0 {
            "python" | "python3" | "python3.12" => Some(Self::Python),
            "node" => Some(Self::Node),
            _ => None,
        }
    }

    /// Its module's name in `modules.lock`.
    pub fn lock_name(self) -> &'static str {
        match self {
            Self::Python => "cpython",
            Self::Node => "quickjs",
        }
    }

    /// The prefix of its facts in the template identity (`python.sha256`, `node.sha256`).
    pub fn fact_prefix(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "node",
        }
    }
}

/// One pinned module of `modules.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PinnedModule {
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) requirement: String,
}

/// The pins compiled into this crate.
pub(crate) fn pinned() -> Vec<PinnedModule> {
    LOCK.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 6 {
                return None;
            }
            Some(PinnedModule {
                name: f[0].to_owned(),
                file: f[1].to_owned(),
                size: f[2].parse().ok()?,
                sha256: f[3].to_ascii_lowercase(),
                requirement: f[4].to_owned(),
            })
        })
        .collect()
}

/// What a pinned module is, for the identity (keyed by sha256: a re-pinned module whose
/// description is not known here says so instead of lying).
fn describe(sha256: &str) -> &'static str {
    match sha256 {
        "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763" => {
            "CPython 3.12.0 for wasm32-wasi (VMware Wasm Labs webassembly-language-runtimes python/3.12.0+20231211-040d5a6, stdlib embedded)"
        }
        "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783" => {
            "QuickJS-NG 0.11.0 for wasm32-wasi (wasi-sdk, clang 19.1.5); not Node.js"
        }
        _ => "unknown build (identified by its sha256 only)",
    }
}

/// What `<argv[0]> --version` names for a pinned module, under the same fact keys as the
/// other backends (`python3.version`, `node.version`).
fn version_line(sha256: &str) -> &'static str {
    match sha256 {
        "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763" => {
            "Python 3.12.0 (CPython for wasm32-wasi)"
        }
        "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783" => {
            "QuickJS-NG 0.11.0 (not Node.js)"
        }
        _ => "unknown (identified by its sha256 only)",
    }
}

/// A module file that matched its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedModule {
    pub(crate) interpreter: Interpreter,
    pub(crate) path: PathBuf,
    pub(crate) pin: PinnedModule,
}

/// The verified modules of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateModules {
    pub(crate) python: VerifiedModule,
    pub(crate) node: VerifiedModule,
}

impl TemplateModules {
    pub(crate) fn get(&self, interpreter: Interpreter) -> &VerifiedModule {
        match interpreter {
            Interpreter::Python => &self.python,
            Interpreter::Node => &self.node,
        }
    }

    /// The template identity: module file, size, sha256 and description per interpreter,
    /// plus the runtime.
    pub(crate) fn identity(&self) -> TemplateIdentity {
        let mut id = TemplateIdentity::default()
            .with("runtime", format!("wasmtime {}", crate::WASMTIME_VERSION))
            .with("wasi", "preview1");
        for i in Interpreter::ALL {
            let m = self.get(i);
            let p = i.fact_prefix();
            id = id
                .with(format!("{p}.module"), m.pin.file.clone())
                .with(format!("{p}.sha256"), m.pin.sha256.clone())
                .with(format!("{p}.sizeBytes"), m.pin.size.to_string())
                .with(format!("{p}.version"), describe(&m.pin.sha256))
                .with(
                    format!("{p}.source"),
                    format!("PyPI wheel {}", m.pin.requirement),
                );
            // The keys every backend records for the interpreters that ran.
            let argv0 = match i {
                Interpreter::Python => "python3",
                Interpreter::Node => "node",
            };
            id = id
                .with(
                    format!("{argv0}.path"),
                    format!("{} (WASI module)", m.path.display()),
                )
                .with(format!("{argv0}.version"), version_line(&m.pin.sha256));
        }
        id
    }
}

/// (device, inode, size, mtime ns) of a file whose digest was checked.
type FileStamp = (u64, u64, u64, i128);

/// Verifies module files against their pins, hashing each file only when it changed.
#[derive(Debug, Default)]
pub(crate) struct ModuleVerifier {
    checked: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
}

impl ModuleVerifier {
    /// Verifies both modules in `dir`; `Err` is the reason the template is unavailable.
    pub(crate) fn verify(&self, dir: &Path) -> Result<TemplateModules, String> {
        let pins = pinned();
        let find = |i: Interpreter| -> Result<VerifiedModule, String> {
            let pin = pins
                .iter()
                .find(|p| p.name == i.lock_name())
                .ok_or_else(|| format!("modules.lock pins no {:?} module", i.lock_name()))?;
            let path = dir.join(&pin.file);
            self.check(&path, pin)?;
            Ok(VerifiedModule {
                interpreter: i,
                path,
                pin: pin.clone(),
            })
        };
        Ok(TemplateModules {
            python: find(Interpreter::Python)?,
            node: find(Interpreter::Node)?,
        })
    }

    fn check(&self, path: &Path, pin: &PinnedModule) -> Result<(), String> {
        let fix = format!(
            "run `{SETUP_COMMAND}` (or {FETCH_SCRIPT} in a source checkout) to fetch and verify it"
        );
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("{} is missing ({e}); {fix}", path.display()))?;
        if !meta.is_file() || meta.len() != pin.size {
            return Err(format!(
                "{} is {} bytes, {} pins {}; {fix}",
                path.display(),
                meta.len(),
                "modules.lock",
                pin.size
            ));
        }
        let stamp: FileStamp = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        );
        let known = self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, d)| d.clone());
        let digest = match known {
            Some(d) => d,
            None => {
                let d = sha256_file(path)
                    .map_err(|e| format!("reading {} failed: {e}", path.display()))?;
                self.checked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_owned(), (stamp, d.clone()));
                d
            }
        };
        if digest != pin.sha256 {
            return Err(format!(
                "{} has sha256 {digest}, modules.lock pins {}; `{SETUP_COMMAND} --force` fetches it again",
                path.display(),
                pin.sha256
            ));
        }
        Ok(())
    }
}

/// Lowercase hex sha256 of a file.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn argv0_selects_the_interpreter() {
        assert_eq!(
            Interpreter::from_argv0("python3"),
            Some(Interpreter::Python)
        );
        assert_eq!(Interpreter::from_argv0("python"), Some(Interpreter::Python));
        assert_eq!(Interpreter::from_argv0("node"), Some(Interpreter::Node));
        assert_eq!(Interpreter::from_argv0("sh"), None);
        assert_eq!(Interpreter::from_argv0("/usr/bin/python3"), None);
    }

    #[test]
    fn the_lock_pins_both_modules() {
        let pins = pinned();
        assert_eq!(pins.len(), 2);
        for i in Interpreter::ALL {
            let p = pins.iter().find(|p| p.name == i.lock_name()).unwrap();
            assert_eq!(p.sha256.len(), 64);
            assert_ne!(
                describe(&p.sha256),
                describe("0"),
                "the pinned build is described"
            );
        }
    }

    #[test]
    fn a_wrong_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let pins = pinned();
        let py = pins.iter().find(|p| p.name == "cpython").unwrap();
        let v = ModuleVerifier::default();
        let missing = v.verify(dir.path()).unwrap_err();
        assert!(missing.contains(FETCH_SCRIPT), "{missing}");
        std::fs::write(dir.path().join(&py.file), vec![0u8; py.size as usize]).unwrap();
        let wrong = v.verify(dir.path()).unwrap_err();
        assert!(wrong.contains("sha256"), "{wrong}");
    }
}
