//! The containment probe result, cached in memory (per process) and on disk (per boot, in
//! the sandbox root), so that constructing a [`crate::ProcessBackend`] does not fork into
//! fresh namespaces every time (1.4–13 ms per construction, i.e. per CLI command).
//!
//! Measured (release CLI, `crownest run tiny.tgz -- true`, hyperfine 60 runs each, before
//! and after side by side on a loaded 2-core machine): one `unshare` per run instead of
//! two, mean 75.6 → 65.4 ms (overhead over the shell baseline +58.4 → +48.1 ms).
//!
//! **Key.** A result is reused only for the same [`Key`]: the boot id
//! (`/proc/sys/kernel/random/boot_id`), the effective uid, the kernel release
//! (`/proc/sys/kernel/osrelease`, as `uname -r`) and the configuration fields the probe
//! depends on (`containment`, `isolate_network`, `cgroup_parent`). A reboot, another user or
//! another kernel therefore re-probes. When the boot id cannot be read, nothing is read from
//! or written to disk (the memory cache still applies).
//!
//! **Trust.** The file `<root>/.containment-probe.json` is written atomically (a temporary
//! file in the same directory, mode 0600, then `rename`). The root is created mode 0700 and
//! checked by `workspace::ensure_root` to be a real directory owned by the effective uid,
//! so another (non-root) user can neither create nor replace a file in it: a planted cache
//! that claims a stronger containment than what works is not possible. As defence in depth,
//! the file is only read when the root has no group/other write bit, and the file itself is
//! a regular file (opened without following a symlink) owned by the effective uid with no
//! group/other write bit. Anything else, or a file that is unreadable, too large, malformed
//! or of another schema, is ignored and the probe runs again (and rewrites the file).
//!
//! **Staleness inside one boot.** The environment can change without a reboot (a cgroup
//! removed, user namespaces switched off by sysctl). A cached result is then found wrong
//! when a command fails to spawn; the backend re-probes once and retries (see
//! `ProcessSandbox::exec`), and the new result replaces the cached one.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::ProcessConfig;
use crate::containment::Probe;

/// Name of the cache file in the sandbox root.
pub(crate) const FILE: &str = ".containment-probe.json";
const SCHEMA: u32 = 2;
/// Entries kept in the file (one per configuration seen in this boot).
const MAX_ENTRIES: usize = 16;
/// A larger file is not read.
const MAX_BYTES: u64 = 256 * 1024;

/// What a probe result depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Key {
    /// `None` when unreadable: the disk cache is then not used.
    pub(crate) boot_id: Option<String>,
    pub(crate) euid: u32,
    pub(crate) kernel: String,
    pub(crate) containment: String,
    pub(crate) isolate_network: bool,
    pub(crate) cgroup_parent: Option<PathBuf>,
}

impl Key {
    /// The key for `config` on this host, now.
    pub(crate) fn current(config: &ProcessConfig) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Self {
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            euid: rustix::process::geteuid().as_raw(),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            containment: format!("{:?}", config.containment),
            isolate_network: config.isolate_network,
            cgroup_parent: config.cgroup_parent.clone(),
        }
    }
}

impl EntryKey for Key {
    /// Same host state (boot, user, kernel): entries of another are dropped from the file.
    fn same_host(&self, other: &Self) -> bool {
        self.boot_id == other.boot_id && self.euid == other.euid && self.kernel == other.kernel
    }
}

/// The cache file: `{schema, entries: [{key, value: Probe}]}`.
const CACHE: EntryFile = EntryFile {
    name: FILE,
    schema: SCHEMA,
    max_entries: MAX_ENTRIES,
    max_bytes: MAX_BYTES,
};

/// A key of an [`EntryFile`].
pub(crate) trait EntryKey: PartialEq + Clone + Serialize + DeserializeOwned {
    /// Same host state (boot, user, ...): entries of another are dropped when the file is
    /// rewritten.
    fn same_host(&self, other: &Self) -> bool;
}

/// A small JSON cache file in the sandbox root, `{schema, entries: [{key, value}]}`: the
/// newest entry last, at most `max_entries`, only those of the host state of the entry
/// written kept; read only when trusted ([`read_trusted`]), written atomically and private
/// ([`write_private`]). The containment probe's cache and the interpreter versions' cache
/// (`version_cache.rs`) are both one.
pub(crate) struct EntryFile {
    pub(crate) name: &'static str,
    pub(crate) schema: u32,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry<K, V> {
    key: K,
    value: V,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CacheFile<K, V> {
    schema: u32,
    entries: Vec<Entry<K, V>>,
}

impl EntryFile {
    fn read<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        root: &Path,
    ) -> Option<CacheFile<K, V>> {
        let text = read_trusted(root, self.name, self.max_bytes)?;
        let parsed: CacheFile<K, V> = serde_json::from_str(&text).ok()?;
        (parsed.schema == self.schema).then_some(parsed)
    }

    /// The value stored for `key`, if the file is trusted and holds it.
    pub(crate) fn load<K: EntryKey, V: DeserializeOwned>(&self, root: &Path, key: &K) -> Option<V> {
        self.read::<K, V>(root)?
            .entries
            .into_iter()
            .find(|e| &e.key == key)
            .map(|e| e.value)
    }

    /// Stores `value` for `key` (replacing its old entry, dropping other hosts' entries and
    /// the oldest past `max_entries`).
    pub(crate) fn store<K: EntryKey, V: Serialize + DeserializeOwned + Clone>(
        &self,
        root: &Path,
        key: &K,
        value: &V,
    ) -> std::io::Result<()> {
        let mut entries: Vec<Entry<K, V>> = self
            .read::<K, V>(root)
            .map(|f| f.entries)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.key.same_host(key) && &e.key != key)
            .collect();
        entries.push(Entry {
            key: key.clone(),
            value: value.clone(),
        });
        if entries.len() > self.max_entries {
            entries.drain(..entries.len() - self.max_entries);
        }
        let text = serde_json::to_vec_pretty(&CacheFile {
            schema: self.schema,
            entries,
        })
        .map_err(std::io::Error::other)?;
        write_private(root, self.name, &text)
    }
}

/// Where a probe result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Probed just now.
    Fresh,
    /// The in-memory cache of this process.
    Memory,
    /// The file in the sandbox root.
    Disk,
}

impl Source {
    /// True for a result that was not probed by this call (it may be out of date).
    pub(crate) fn cached(self) -> bool {
        self != Self::Fresh
    }
}

/// The in-memory cache: probe results by [`Key`].
#[derive(Debug, Default)]
pub(crate) struct MemCache(Mutex<Vec<(Key, Arc<Probe>)>>);

impl MemCache {
    /// The cache of this process.
    pub(crate) fn global() -> &'static Self {
        static GLOBAL: OnceLock<MemCache> = OnceLock::new();
        GLOBAL.get_or_init(Self::default)
    }

    fn get(&self, key: &Key) -> Option<Arc<Probe>> {
        let entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
    }

    fn put(&self, key: &Key, probe: Arc<Probe>) {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(k, _)| k != key);
        entries.push((key.clone(), probe));
    }
}

/// The probe result for `key`: from `mem`, else from the file in `root`, else from
/// `fresh()` (then stored in both).
pub(crate) fn lookup(
    mem: &MemCache,
    root: &Path,
    key: &Key,
    fresh: impl FnOnce() -> Result<Probe, String>,
) -> Result<(Arc<Probe>, Source), String> {
    if let Some(p) = mem.get(key) {
        return Ok((p, Source::Memory));
    }
    if let Some(p) = load(root, key) {
        let p = Arc::new(p);
        mem.put(key, p.clone());
        return Ok((p, Source::Disk));
    }
    let p = Arc::new(fresh()?);
    store(mem, root, key, &p);
    Ok((p, Source::Fresh))
}

/// Records a result probed outside [`lookup`] (a re-probe) in `mem` and in the file.
pub(crate) fn store(mem: &MemCache, root: &Path, key: &Key, probe: &Arc<Probe>) {
    mem.put(key, probe.clone());
    if let Err(e) = write(root, key, probe) {
        tracing::debug!(root = %root.display(), error = %e, "process backend: the containment probe cache was not written");
    }
}

/// True when files in `root` can only have been written by us (see the module docs).
pub(crate) fn root_trusted(root: &Path) -> bool {
    std::fs::symlink_metadata(root).is_ok_and(|m| {
        m.is_dir() && m.uid() == rustix::process::geteuid().as_raw() && m.mode() & 0o022 == 0
    })
}

/// The text of `<root>/<name>` when it can only have been written by us (a trusted root; a
/// regular file, not a symlink, owned by us without group/other write, at most `max`
/// bytes), else `None`.
pub(crate) fn read_trusted(root: &Path, name: &str, max: u64) -> Option<String> {
    if !root_trusted(root) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(root.join(name))
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file()
        || meta.uid() != rustix::process::geteuid().as_raw()
        || meta.mode() & 0o022 != 0
        || meta.len() > max
    {
        return None;
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Replaces `<root>/<name>` with `bytes` atomically (a temporary file of mode 0600 in the
/// same directory, then `rename`), in a trusted root only.
pub(crate) fn write_private(root: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if !root_trusted(root) {
        return Err(std::io::Error::other(
            "the sandbox root is not a directory owned by us without group/other write",
        ));
    }
    let tmp = root.join(format!("{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, root.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The cached result for `key` in `root`, if any (and trusted, see the module docs).
pub(crate) fn load(root: &Path, key: &Key) -> Option<Probe> {
    key.boot_id.as_ref()?;
    CACHE.load(root, key)
}

fn write(root: &Path, key: &Key, probe: &Probe) -> std::io::Result<()> {
    if key.boot_id.is_none() {
        return Ok(());
    }
    CACHE.store(root, key, probe)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::Cell;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::containment::Applied;

    fn key(boot: &str) -> Key {
        Key {
            boot_id: Some(boot.into()),
            euid: rustix::process::geteuid().as_raw(),
            kernel: "6.1.0-test".into(),
            containment: "Auto".into(),
            isolate_network: true,
            cgroup_parent: None,
        }
    }

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn probe(applied: Applied) -> Probe {
        Probe {
            applied,
            notes: vec!["a note".into()],
        }
    }

    /// Runs `lookup` with a fresh memory cache (a new process), counting real probes.
    fn look(root: &Path, key: &Key, result: Applied, probes: &Cell<u32>) -> (Probe, Source) {
        look_in(&MemCache::default(), root, key, result, probes)
    }

    fn look_in(
        mem: &MemCache,
        root: &Path,
        key: &Key,
        result: Applied,
        probes: &Cell<u32>,
    ) -> (Probe, Source) {
        let (p, s) = lookup(mem, root, key, || {
            probes.set(probes.get() + 1);
            Ok(probe(result))
        })
        .unwrap();
        ((*p).clone(), s)
    }

    #[test]
    fn memory_then_disk_hit_without_probing_again() {
        let dir = root();
        let probes = Cell::new(0);
        let mem = MemCache::default();
        let k = key("boot-a");
        let (p, s) = look_in(&mem, dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!((s, probes.get()), (Source::Fresh, 1));
        assert_eq!(p.applied, Applied::ProcessGroup);
        // Same process: memory.
        let (p, s) = look_in(&mem, dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!((s, probes.get()), (Source::Memory, 1));
        assert_eq!(p.notes, vec!["a note".to_owned()]);
        // Another process: the file, with the same result (not what a new probe would say).
        let (p, s) = look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!((s, probes.get()), (Source::Disk, 1));
        assert_eq!(p.applied, Applied::ProcessGroup);
        assert_eq!(p.notes, vec!["a note".to_owned()]);
        let meta = std::fs::metadata(dir.path().join(FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
    }

    #[test]
    fn disk_entry_survives_a_different_result_only_for_its_key() {
        let dir = root();
        let probes = Cell::new(0);
        let pg = Applied::PidNamespace {
            user: true,
            network: false,
        };
        look(dir.path(), &key("b"), pg.clone(), &probes);
        let (p, s) = look(dir.path(), &key("b"), Applied::ProcessGroup, &probes);
        assert_eq!((s, p.applied, probes.get()), (Source::Disk, pg, 1));
    }

    #[test]
    fn stale_boot_id_uid_or_kernel_reprobes() {
        let dir = root();
        let probes = Cell::new(0);
        let k = key("boot-1");
        look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!(probes.get(), 1);
        let cgroup = Applied::Cgroup {
            parent: "/sys/fs/cgroup/x".into(),
        };
        let rebooted = key("boot-2");
        let (p, s) = look(dir.path(), &rebooted, cgroup.clone(), &probes);
        assert_eq!((s, &p.applied, probes.get()), (Source::Fresh, &cgroup, 2));
        let other_user = Key {
            euid: k.euid.wrapping_add(1),
            ..rebooted.clone()
        };
        let (_, s) = look(dir.path(), &other_user, cgroup.clone(), &probes);
        assert_eq!((s, probes.get()), (Source::Fresh, 3));
        let other_kernel = Key {
            kernel: "6.2.0-test".into(),
            ..rebooted.clone()
        };
        let (_, s) = look(dir.path(), &other_kernel, cgroup.clone(), &probes);
        assert_eq!((s, probes.get()), (Source::Fresh, 4));
        // Entries of another boot/user/kernel were dropped on rewrite; the last one stays.
        let file = CACHE.read::<Key, Probe>(dir.path()).unwrap();
        assert_eq!(file.entries.len(), 1);
        assert_eq!(file.entries[0].key, other_kernel);
        // The first boot's entry is gone: it re-probes too.
        let (_, s) = look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!((s, probes.get()), (Source::Fresh, 5));
    }

    #[test]
    fn malformed_or_untrusted_file_reprobes_and_is_rewritten() {
        let dir = root();
        let probes = Cell::new(0);
        let k = key("boot-m");
        let path = dir.path().join(FILE);
        for junk in [
            &b"{not json"[..],
            b"",
            b"{\"schema\":99,\"entries\":[]}",
            b"{\"schema\":1,\"entries\":[{\"key\":{},\"probe\":{}}]}",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, junk).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let before = probes.get();
            let (_, s) = look(dir.path(), &k, Applied::ProcessGroup, &probes);
            assert_eq!((s, probes.get()), (Source::Fresh, before + 1), "{junk:?}");
            // Rewritten: the next process hits.
            let (_, s) = look(dir.path(), &k, Applied::ProcessGroup, &probes);
            assert_eq!(s, Source::Disk);
        }
        // A group/other-writable file is not trusted.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, s) = look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!(s, Source::Fresh);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "rewritten with mode 0600"
        );
        // A symlink is not followed.
        let elsewhere = root();
        look(elsewhere.path(), &k, Applied::ProcessGroup, &probes);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(FILE), &path).unwrap();
        assert!(load(dir.path(), &k).is_none());
        // A group/other-writable root is not trusted (neither read nor written).
        std::fs::remove_file(&path).unwrap();
        look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert!(load(dir.path(), &k).is_some());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(load(dir.path(), &k).is_none());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn different_config_is_a_different_entry() {
        let dir = root();
        let probes = Cell::new(0);
        let mem = MemCache::default();
        let auto = key("boot-c");
        let forced = Key {
            containment: "Cgroup".into(),
            cgroup_parent: Some("/sys/fs/cgroup/mine".into()),
            ..auto.clone()
        };
        let no_net = Key {
            isolate_network: false,
            ..auto.clone()
        };
        let cg = Applied::Cgroup {
            parent: "/sys/fs/cgroup/mine".into(),
        };
        let ns = Applied::PidNamespace {
            user: false,
            network: false,
        };
        look_in(&mem, dir.path(), &auto, Applied::ProcessGroup, &probes);
        let (p, s) = look_in(&mem, dir.path(), &forced, cg.clone(), &probes);
        assert_eq!((s, &p.applied, probes.get()), (Source::Fresh, &cg, 2));
        let (p, s) = look_in(&mem, dir.path(), &no_net, ns.clone(), &probes);
        assert_eq!((s, &p.applied, probes.get()), (Source::Fresh, &ns, 3));
        // All three are kept, each with its own result.
        for (k, want) in [(&auto, Applied::ProcessGroup), (&forced, cg), (&no_net, ns)] {
            let (p, s) = look(dir.path(), k, Applied::ProcessGroup, &probes);
            assert_eq!((s, p.applied), (Source::Disk, want));
        }
        assert_eq!(probes.get(), 3);
    }

    #[test]
    fn unknown_boot_id_uses_memory_only_and_errors_are_not_cached() {
        let dir = root();
        let probes = Cell::new(0);
        let k = Key {
            boot_id: None,
            ..key("x")
        };
        look(dir.path(), &k, Applied::ProcessGroup, &probes);
        assert!(!dir.path().join(FILE).exists());
        let mem = MemCache::default();
        let k = key("boot-e");
        let err = lookup(&mem, dir.path(), &k, || Err("no".to_owned())).unwrap_err();
        assert_eq!(err, "no");
        let (_, s) = look_in(&mem, dir.path(), &k, Applied::ProcessGroup, &probes);
        assert_eq!(s, Source::Fresh);
    }
}
