//! The store directory: where the database, blobs, chunks and temp files live, and the
//! small filesystem steps (temp files, trash) the writes are built on.
//!
//! ```text
//! <dir>/crownest.db (+ -wal, -shm)   SQLite database
//! <dir>/blobs/ab/cdef...             content-addressed blobs (sha256: 2 + 62 hex chars)
//! <dir>/transfers/<transferId>/<i>   chunk i of a staged transfer
//! <dir>/tmp/                         uploads in flight, files being renamed away
//! ```
//!
//! Everything but the database is a [`BlobDir`], the blob directory core shares with the
//! PostgreSQL store.

use std::path::{Path, PathBuf};

use crownest_core::store::blob_dir::BlobDir;

/// Paths of one store directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) db: PathBuf,
    /// `blobs/`, `transfers/`, `tmp/`.
    pub(crate) files: BlobDir,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            db: root.join("crownest.db"),
            files: BlobDir::new(root),
        }
    }

    /// Creates the directories (and makes their entries durable).
    pub(crate) fn create(&self) -> std::io::Result<()> {
        self.files.create()
    }

    /// The database's write-ahead log (`<dir>/crownest.db-wal`).
    pub(crate) fn wal_path(&self) -> PathBuf {
        let mut name = self.db.clone().into_os_string();
        name.push("-wal");
        PathBuf::from(name)
    }

    /// A fresh, unused path in `<dir>/tmp`.
    pub(crate) fn temp_path(&self, prefix: &str) -> PathBuf {
        self.files.temp_path(prefix)
    }
}

/// A temp file path removed on drop unless it was renamed into place.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    /// Stops tracking a path at which no file was made (an upload kept in memory).
    pub(crate) fn disarm(mut self) -> Self {
        self.path = None;
        self
    }

    /// Checks the temp file is still there: `gc` removes temp files older than `temp_ttl`,
    /// so an upload stalled that long loses its bytes. That fails the upload (a logical
    /// error), not the store.
    pub(crate) fn check_present(&self) -> Result<(), crate::error::OpError> {
        match &self.path {
            Some(p) if !p.exists() => Err(crate::error::OpError::Logical(
                crownest_core::Error::Store {
                    message: format!(
                        "the upload's temp file {} was removed (by gc after temp_ttl?)",
                        p.display()
                    ),
                    source: None,
                },
            )),
            _ => Ok(()),
        }
    }

    /// The temp file's path (none once persisted).
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Renames the file to `to` and stops tracking it.
    pub(crate) fn persist(mut self, to: &Path) -> std::io::Result<()> {
        if let Some(p) = &self.path {
            std::fs::rename(p, to)?;
        }
        self.path = None;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A file or directory moved out of the way inside a write transaction: deleted once the
/// transaction committed, moved back if it rolled back.
#[derive(Debug)]
pub(crate) struct Trashed {
    pub(crate) original: PathBuf,
    pub(crate) trash: PathBuf,
}

impl Trashed {
    /// Moves `original` into `<dir>/tmp`; `Ok(None)` when it does not exist.
    pub(crate) fn take(layout: &Layout, original: &Path) -> std::io::Result<Option<Self>> {
        let trash = layout.temp_path("trash");
        match std::fs::rename(original, &trash) {
            Ok(()) => Ok(Some(Self {
                original: original.to_path_buf(),
                trash,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes it for good (best effort: `gc` removes leftovers from `<dir>/tmp`).
    pub(crate) fn purge(self) {
        let _ = if self.trash.is_dir() {
            std::fs::remove_dir_all(&self.trash)
        } else {
            std::fs::remove_file(&self.trash)
        };
    }

    /// Puts it back (best effort: the store is being poisoned anyway).
    pub(crate) fn restore(self) {
        let _ = std::fs::rename(&self.trash, &self.original);
    }
}
