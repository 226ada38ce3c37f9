//! The private staging directory an extraction writes into: created next to the
//! destination (mode 0700, a random name), moved to the destination with
//! `RENAME_NOREPLACE` only when the whole archive passed, and removed otherwise (on any
//! error, or a panic), so nothing is left behind.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The private staging directory next to `dest`; removed on drop unless committed.
pub(super) struct Staging {
    path: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates a staging directory next to `dest`, which must not exist yet (its parent
    /// must).
    pub(super) fn create(dest: &Path) -> Result<Self> {
        let context = || format!("extracting into {}", dest.display());
        if dest.symlink_metadata().is_ok() {
            return Err(Error::io(
                context(),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the destination already exists",
                ),
            ));
        }
        if dest.file_name().is_none() {
            return Err(Error::io(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the destination has no file name",
                ),
            ));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut last = None;
        for _ in 0..16 {
            let path = parent.join(format!(".crownest-staging-{:016x}", rand::random::<u64>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(Self {
                        path,
                        dest: dest.to_path_buf(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::io(context(), e)),
            }
        }
        Err(Error::io(
            context(),
            last.unwrap_or_else(|| io::Error::other("no staging name")),
        ))
    }

    /// Opens the staging directory (never through a symlink) for the writer.
    pub(super) fn open(&self) -> Result<OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("opening the staging directory", e.into()))
    }

    /// Moves the staging directory to `dest`, never replacing anything there.
    pub(super) fn commit(mut self) -> Result<()> {
        use rustix::fs::{CWD, RenameFlags};
        let context = || format!("moving the extracted tree to {}", self.dest.display());
        match rustix::fs::renameat_with(CWD, &self.path, CWD, &self.dest, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // The filesystem cannot do RENAME_NOREPLACE: check, then rename.
                if self.dest.symlink_metadata().is_ok() {
                    return Err(Error::io(
                        context(),
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "the destination already exists",
                        ),
                    ));
                }
                std::fs::rename(&self.path, &self.dest).map_err(|e| Error::io(context(), e))?;
            }
            Err(e) => return Err(Error::io(context(), e.into())),
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the staging directory");
        }
    }
}
