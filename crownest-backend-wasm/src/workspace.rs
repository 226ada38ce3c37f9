//! Sandbox directories on the host: `<root>/<run>-<rand>/` holding `sandbox.json` (the
//! marker: run id, owner process, keep-until), `workspace/` (preopened as `/workspace`)
//! and `python/sitecustomize.py` (preopened read-only for CPython). The marker lives
//! outside the workspace, so the guest can neither read nor forge it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crownest_core::hostdir::remove_tree;
use crownest_core::run::RunOwner;
use crownest_core::{RunId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::WasmError;
use crate::guest::PYTHON_SITECUSTOMIZE;

/// File name of the marker.
pub(crate) const MARKER: &str = "sandbox.json";
/// Directories without a readable marker younger than this are left alone by a sweep (a
/// sandbox being created right now).
const UNMARKED_GRACE_SECS: u64 = 600;

/// The marker of a sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Marker {
    pub(crate) run_id: RunId,
    pub(crate) instance: String,
    pub(crate) owner: RunOwner,
    pub(crate) created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) keep_until: Option<Timestamp>,
}

/// The host paths of one sandbox.
#[derive(Debug, Clone)]
pub(crate) struct SandboxDir {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
}

impl SandboxDir {
    pub(crate) fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    pub(crate) fn python_site(&self) -> PathBuf {
        self.dir.join("python")
    }

    /// Creates the directory, its marker, an empty workspace and the CPython start-up file.
    pub(crate) fn create(root: &Path, marker: &Marker) -> Result<Self, WasmError> {
        std::fs::create_dir_all(root)
            .map_err(WasmError::io(format!("creating {}", root.display())))?;
        let id = format!("{}-{:08x}", marker.run_id, rand::random::<u32>());
        let dir = root.join(&id);
        std::fs::create_dir(&dir).map_err(WasmError::io(format!("creating {}", dir.display())))?;
        let s = Self { id, dir };
        let made = (|| {
            s.write_marker(marker)?;
            std::fs::create_dir(s.workspace()).map_err(WasmError::io("creating the workspace"))?;
            std::fs::create_dir(s.python_site())
                .map_err(WasmError::io("creating the python dir"))?;
            std::fs::write(
                s.python_site().join("sitecustomize.py"),
                PYTHON_SITECUSTOMIZE,
            )
            .map_err(WasmError::io("writing sitecustomize.py"))
        })();
        if let Err(e) = made {
            let _ = remove_tree(&s.dir);
            return Err(e);
        }
        Ok(s)
    }

    /// Rewrites the marker atomically.
    pub(crate) fn write_marker(&self, marker: &Marker) -> Result<(), WasmError> {
        let json = serde_json::to_vec_pretty(marker).map_err(|e| WasmError::Io {
            context: "encoding the marker".into(),
            source: e.into(),
        })?;
        let tmp = self.dir.join(format!(".{MARKER}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            std::fs::rename(&tmp, self.dir.join(MARKER))
        };
        write().map_err(WasmError::io(format!("writing the marker of {}", self.id)))
    }
}

/// Reads the marker of a sandbox directory.
pub(crate) fn read_marker(dir: &Path) -> Option<Marker> {
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the sandbox directories under `root` that are orphans: a run not in `live`
/// whose owner process is gone, or a kept sandbox whose `keep_until` passed. Directories
/// without a readable marker are removed once older than ten minutes. Returns the ids
/// removed. Half-removed sandboxes (`.removing-`) are deleted; other names starting with
/// `.` are never touched.
pub(crate) fn sweep(root: &Path, live: &[RunId]) -> Result<Vec<String>, WasmError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WasmError::io(format!("listing {}", root.display()))(e)),
    };
    let now = Timestamp::now();
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(crownest_core::hostdir::TOMBSTONE_PREFIX) {
            // A removal that was cut short: garbage, whoever was removing it.
            let _ = remove_tree(&entry.path());
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let orphan = match read_marker(&path) {
            Some(m) => match m.keep_until {
                Some(until) => until <= now,
                None => !m.owner.is_alive() && !live.contains(&m.run_id),
            },
            None => entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > UNMARKED_GRACE_SECS),
        };
        if orphan {
            match crownest_core::hostdir::remove_via_tombstone(&path) {
                Ok(()) => swept.push(name),
                Err(e) => {
                    tracing::warn!(sandbox = %name, error = %e, "removing an orphaned wasm sandbox failed")
                }
            }
        }
    }
    Ok(swept)
}
