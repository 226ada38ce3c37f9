//! [`LocalDirBlobs`]: blob and chunk bytes in a local (or shared, e.g. NFS) directory.
//!
//! ```text
//! <blob_dir>/blobs/ab/cdef...             content-addressed blobs (sha256: 2 + 62 hex chars)
//! <blob_dir>/transfers/<transferId>/<i>   chunk i of a staged transfer
//! <blob_dir>/tmp/                         uploads and chunks in flight
//! ```
//!
//! Bytes stream into `tmp/` while hashed and counted (1 MiB buffers written on a blocking
//! thread: never a whole blob in memory), are fsynced, then renamed to their address and the
//! directory fsynced. The layout and those steps are core's
//! [`crownest_core::store::blob_dir`], shared with the SQLite store.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use crownest_core::store::blob_dir::{
    self, BlobDir, ReceiveError, WriteHook, ensure_dir, fsync_dir,
};
use crownest_core::store::{BlobExpect, BlobInfo, BlobReader, ByteStream};
use crownest_core::{Error, Result, Sha256Digest, TransferId};

use crate::blobs::{BlobBackend, Staged};
use crate::error::{io, task};

/// Blob bytes in a directory.
#[derive(Debug, Clone)]
pub(crate) struct LocalDirBlobs {
    dir: BlobDir,
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| task(what, e))?
        .map_err(|e| io(what, e))
}

impl LocalDirBlobs {
    /// The layout under `root`, directories created.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let dir = BlobDir::new(root);
        dir.create().map_err(|e| {
            io(
                &format!("creating the blob directory {}", root.display()),
                e,
            )
        })?;
        Ok(Self { dir })
    }

    /// A staged file at `path` with `info`, removed on drop unless installed.
    fn staged(path: PathBuf, info: BlobInfo) -> Staged {
        let name = path.to_string_lossy().into_owned();
        Staged::new(info, name, move || {
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Renames a staged file to `to` (its directory created and fsynced).
    async fn install(mut staged: Staged, to: PathBuf) -> Result<()> {
        let from = PathBuf::from(&staged.name);
        blocking("moving bytes into place", move || {
            if !from.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the staged file {} was removed (by gc after temp_ttl?)",
                        from.display()
                    ),
                ));
            }
            if let Some(dir) = to.parent() {
                ensure_dir(dir)?;
            }
            std::fs::rename(&from, &to)?;
            match to.parent() {
                Some(dir) => fsync_dir(dir),
                None => Ok(()),
            }
        })
        .await?;
        staged.disarm();
        Ok(())
    }
}

#[async_trait]
impl BlobBackend for LocalDirBlobs {
    async fn receive(&self, data: ByteStream, expect: BlobExpect<'_>) -> Result<Staged> {
        let path = self.dir.temp_path("blob");
        let hook: WriteHook = std::sync::Arc::new(|| Ok(()));
        let info = blob_dir::receive(&path, data, expect, &hook)
            .await
            .map_err(|e| match e {
                ReceiveError::Refused(e) => e,
                ReceiveError::Write { context, source } => io(context, source),
            })?;
        Ok(Self::staged(path, info))
    }

    async fn stage_chunk(&self, data: Bytes) -> Result<Staged> {
        let path = self.dir.temp_path("chunk");
        let info = BlobInfo {
            sha256: Sha256Digest::of(&data),
            size_bytes: data.len() as u64,
        };
        let staged = Self::staged(path.clone(), info);
        blocking("writing a chunk temp file", move || {
            let mut f = File::options().write(true).create_new(true).open(&path)?;
            f.write_all(&data)?;
            f.sync_all()
        })
        .await?;
        Ok(staged)
    }

    async fn install_blob(&self, staged: Staged) -> Result<()> {
        let to = self.dir.blob_path(&staged.info.sha256);
        Self::install(staged, to).await
    }

    async fn install_chunk(&self, staged: Staged, transfer: &TransferId, index: u64) -> Result<()> {
        let to = self.dir.chunk_path(transfer, index);
        Self::install(staged, to).await
    }

    async fn read_chunk(&self, transfer: &TransferId, index: u64) -> Result<Vec<u8>> {
        let path = self.dir.chunk_path(transfer, index);
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| task("reading a chunk", e))?
            .map_err(|e| io("reading a stored chunk", e))
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        let path = self.dir.blob_path(sha256);
        match tokio::task::spawn_blocking(move || File::open(path))
            .await
            .map_err(|e| task("opening a blob", e))?
        {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Store {
                message: format!("blob {sha256} has a row but its file is missing"),
                source: Some(Box::new(e)),
            }),
            Err(e) => Err(io("opening a stored blob", e)),
        }
    }

    async fn delete_blob(&self, sha256: &Sha256Digest) -> Result<bool> {
        let path = self.dir.blob_path(sha256);
        blocking("removing a blob file", move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        fsync_dir(dir)?;
                    }
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn list_blobs(&self, age: Duration) -> Result<Vec<Sha256Digest>> {
        let dir = self.dir.clone();
        blocking("listing blobs", move || {
            Ok(dir
                .blob_files(age)?
                .into_iter()
                .map(|(digest, _)| digest)
                .collect())
        })
        .await
    }

    async fn open_chunks(&self, transfer: &TransferId, lens: Vec<u64>) -> Result<BlobReader> {
        let dir = self.dir.transfer_dir(transfer);
        let files = blocking("checking chunk files", move || {
            let mut files = VecDeque::new();
            for (index, want) in lens.into_iter().enumerate() {
                let path = dir.join(index.to_string());
                let got = std::fs::metadata(&path)?.len();
                if got != want {
                    return Err(std::io::Error::other(format!(
                        "chunk file {} has {got} bytes, expected {want}",
                        path.display()
                    )));
                }
                files.push_back(path);
            }
            Ok(files)
        })
        .await?;
        Ok(Box::new(ChunkReader {
            files,
            current: None,
        }))
    }

    async fn delete_chunks(&self, transfer: &TransferId) -> Result<()> {
        let dir = self.dir.transfer_dir(transfer);
        let parent = self.dir.transfers().to_path_buf();
        blocking(
            "removing a transfer's chunks",
            move || match std::fs::remove_dir_all(&dir) {
                Ok(()) => fsync_dir(&parent),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        )
        .await
    }

    async fn list_chunk_sets(&self) -> Result<Vec<TransferId>> {
        let transfers = self.dir.transfers().to_path_buf();
        blocking("listing transfers", move || {
            let entries = match std::fs::read_dir(&transfers) {
                Ok(d) => d.collect::<std::io::Result<Vec<_>>>()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
            Ok(entries
                .into_iter()
                .filter_map(|e| TransferId::parse(&e.file_name().to_string_lossy()).ok())
                .collect())
        })
        .await
    }

    async fn sweep_staging(&self, age: Duration) -> Result<u64> {
        let dir = self.dir.clone();
        blocking("sweeping temp files", move || dir.sweep_tmp(age)).await
    }
}

/// The chunks of a transfer, concatenated in order (opened one after the other).
#[derive(Debug)]
struct ChunkReader {
    files: VecDeque<PathBuf>,
    current: Option<File>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(f) = &mut self.current {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.current = None;
            }
            match self.files.pop_front() {
                None => return Ok(0),
                Some(p) => self.current = Some(File::open(p)?),
            }
        }
    }
}
