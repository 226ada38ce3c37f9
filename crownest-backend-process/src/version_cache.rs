//! The `--version` answers of the template interpreters (`python3`, `node`), cached per boot
//! in the sandbox root (`<root>/.interpreter-versions.json`), so that constructing a
//! [`crate::ProcessBackend`] and listing its templates does not start both interpreters in
//! every process: each CLI command did, on the critical path of every `crownest run` (3–4 ms
//! for `python3 --version`, 6–7 ms for `node --version`, measured on this project's machine).
//!
//! **Key.** An answer is reused only for the same [`Fingerprint`]: the boot id, the effective
//! uid, the `PATH` the interpreter is started with, the program path as resolved on it, and
//! the identity of the file it leads to: canonical path, device, inode, size, modification
//! and status-change times (ns). An upgrade writes a new file (new inode, new ctime) and a
//! retargeted symlink changes the canonical path, so either asks again; the ctime cannot be
//! set back by a user. Only ELF executables are cached: a script (a pyenv shim, a wrapper)
//! may answer differently depending on files elsewhere, so it is asked every time. When the
//! boot id cannot be read, nothing is cached.
//!
//! **Trust.** The same rules as the containment probe's cache
//! ([`crate::probe_cache`]): written atomically with mode 0600 into the root (0700, owned by
//! us), read only from a trusted root and a regular file owned by us without group/other
//! write; anything else, malformed or of another schema is ignored, and the interpreter is
//! asked.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::probe_cache::{EntryFile, EntryKey};

/// Name of the cache file in the sandbox root.
pub(crate) const FILE: &str = ".interpreter-versions.json";
const SCHEMA: u32 = 2;
/// Entries kept (interpreters × `PATH`s seen in this boot).
const MAX_ENTRIES: usize = 32;
/// A larger file is not read.
const MAX_BYTES: u64 = 256 * 1024;

/// What an interpreter's `--version` answer depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Fingerprint {
    boot_id: String,
    euid: u32,
    path_var: String,
    program: PathBuf,
    real_path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    /// The fingerprint of `program` (as resolved on `path_var`) now, or `None` when its
    /// answer must not be cached: no boot id, not a regular ELF file, unreadable.
    pub(crate) fn of(program: &Path, path_var: &str) -> Option<Self> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())?;
        Self::with_boot_id(boot_id, program, path_var)
    }

    fn with_boot_id(boot_id: String, program: &Path, path_var: &str) -> Option<Self> {
        use std::io::Read as _;
        let real_path = std::fs::canonicalize(program).ok()?;
        let mut file = std::fs::File::open(&real_path).ok()?;
        let meta = file.metadata().ok()?;
        let mut magic = [0u8; 4];
        if !meta.is_file() || file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
            return None;
        }
        Some(Self {
            boot_id,
            euid: rustix::process::geteuid().as_raw(),
            path_var: path_var.to_owned(),
            program: program.to_path_buf(),
            real_path,
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl EntryKey for Fingerprint {
    /// Same boot and user: entries of another are dropped from the file.
    fn same_host(&self, other: &Self) -> bool {
        self.boot_id == other.boot_id && self.euid == other.euid
    }
}

/// The cache file: `{schema, entries: [{key, value: version}]}`.
const CACHE: EntryFile = EntryFile {
    name: FILE,
    schema: SCHEMA,
    max_entries: MAX_ENTRIES,
    max_bytes: MAX_BYTES,
};

/// The cached answer for `key` in `root`, if any (and trusted).
pub(crate) fn load(root: &Path, key: &Fingerprint) -> Option<String> {
    CACHE.load(root, key)
}

/// Records `version` for `key` in `root` (best effort: a cache that cannot be written only
/// means the interpreter is asked again next time).
pub(crate) fn store(root: &Path, key: &Fingerprint, version: &str) {
    if let Err(e) = CACHE.store(root, key, &version.to_owned()) {
        tracing::debug!(root = %root.display(), error = %e, "process backend: the interpreter version cache was not written");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    /// An "interpreter": a copy of a real ELF executable (this test binary), or a script.
    fn program(dir: &Path, name: &str, elf: bool) -> PathBuf {
        let p = dir.join(name);
        if elf {
            std::fs::copy(std::env::current_exe().unwrap(), &p).unwrap();
        } else {
            std::fs::write(&p, "#!/bin/sh\necho 1.0\n").unwrap();
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn an_answer_is_reused_for_the_same_file_only() {
        let cache = root();
        let bins = tempfile::tempdir().unwrap();
        let py = program(bins.path(), "python3", true);
        let key = Fingerprint::with_boot_id("boot-a".into(), &py, "/usr/bin").unwrap();
        assert_eq!(load(cache.path(), &key), None);
        store(cache.path(), &key, "Python 3.13.5");
        assert_eq!(load(cache.path(), &key).as_deref(), Some("Python 3.13.5"));
        let meta = std::fs::metadata(cache.path().join(FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);

        // Another boot, another PATH: not the same key.
        let rebooted = Fingerprint::with_boot_id("boot-b".into(), &py, "/usr/bin").unwrap();
        assert_eq!(load(cache.path(), &rebooted), None);
        let other_path = Fingerprint::with_boot_id("boot-a".into(), &py, "/opt/bin").unwrap();
        assert_eq!(load(cache.path(), &other_path), None);

        // The interpreter replaced (an upgrade writes a new file): asked again.
        std::fs::remove_file(&py).unwrap();
        let py = program(bins.path(), "python3", true);
        let upgraded = Fingerprint::with_boot_id("boot-a".into(), &py, "/usr/bin").unwrap();
        assert_ne!(upgraded, key);
        assert_eq!(load(cache.path(), &upgraded), None);

        // Rewritten in place (same inode, new contents): the ctime moved, asked again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&py)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
            .unwrap();
        let rewritten = Fingerprint::with_boot_id("boot-a".into(), &py, "/usr/bin").unwrap();
        assert_ne!(rewritten, upgraded);
    }

    #[test]
    fn a_symlink_retargeted_is_another_key() {
        let bins = tempfile::tempdir().unwrap();
        let a = program(bins.path(), "python3.12", true);
        let b = program(bins.path(), "python3.13", true);
        let link = bins.path().join("python3");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = Fingerprint::with_boot_id("boot".into(), &link, "/usr/bin").unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        let second = Fingerprint::with_boot_id("boot".into(), &link, "/usr/bin").unwrap();
        assert_ne!(first, second);
        assert_eq!(second.real_path, std::fs::canonicalize(&b).unwrap());
    }

    #[test]
    fn scripts_and_missing_files_are_never_cached() {
        let bins = tempfile::tempdir().unwrap();
        let shim = program(bins.path(), "python3", false);
        assert_eq!(Fingerprint::with_boot_id("boot".into(), &shim, "/x"), None);
        let gone = bins.path().join("node");
        assert_eq!(Fingerprint::with_boot_id("boot".into(), &gone, "/x"), None);
    }

    #[test]
    fn an_untrusted_or_malformed_file_is_ignored() {
        let cache = root();
        let bins = tempfile::tempdir().unwrap();
        let py = program(bins.path(), "python3", true);
        let key = Fingerprint::with_boot_id("boot-u".into(), &py, "/usr/bin").unwrap();
        store(cache.path(), &key, "Python 3.13.5");
        // Group-writable file: someone else could have written it.
        let file = cache.path().join(FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert_eq!(load(cache.path(), &key), None);
        for junk in [&b"{not json"[..], b"", b"{\"schema\":99,\"entries\":[]}"] {
            std::fs::remove_file(&file).unwrap();
            std::fs::write(&file, junk).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(load(cache.path(), &key), None);
        }
        // Rewritten by the next answer.
        store(cache.path(), &key, "Python 3.13.5");
        assert_eq!(load(cache.path(), &key).as_deref(), Some("Python 3.13.5"));
        // A group-writable root is not trusted at all.
        std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert_eq!(load(cache.path(), &key), None);
    }
}
