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
//! directory fsynced. The same layout as the SQLite store's blob directory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use crownest_core::memory::check_blob_expectations;
use crownest_core::store::{BlobExpect, BlobInfo, BlobReader, ByteStream};
use crownest_core::{Error, RejectReason, Result, Sha256Digest, TransferId};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::blobs::{BlobBackend, Staged};
use crate::error::{io, task};

/// Bytes gathered before one write + hash on a blocking thread.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Blob bytes in a directory.
#[derive(Debug, Clone)]
pub(crate) struct LocalDirBlobs {
    root: PathBuf,
    blobs: PathBuf,
    transfers: PathBuf,
    tmp: PathBuf,
}

/// Makes a directory's entries (creations, renames, removals) durable.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (one level) if missing, making its entry durable in its parent.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => match dir.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn older_than(meta: &std::fs::Metadata, age: Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|d| d >= age)
}

/// Lists a directory; a missing one is empty.
fn entries(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
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

struct Sink {
    file: File,
    hasher: Sha256,
}

impl LocalDirBlobs {
    /// The layout under `root`, directories created.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let this = Self {
            root: root.to_path_buf(),
            blobs: root.join("blobs"),
            transfers: root.join("transfers"),
            tmp: root.join("tmp"),
        };
        let create = || -> std::io::Result<()> {
            std::fs::create_dir_all(&this.root)?;
            for d in [&this.blobs, &this.transfers, &this.tmp] {
                std::fs::create_dir_all(d)?;
            }
            fsync_dir(&this.root)
        };
        create().map_err(|e| {
            io(
                &format!("creating the blob directory {}", root.display()),
                e,
            )
        })?;
        Ok(this)
    }

    fn blob_path(&self, sha: &Sha256Digest) -> PathBuf {
        let s = sha.as_str();
        self.blobs.join(&s[..2]).join(&s[2..])
    }

    fn transfer_dir(&self, id: &TransferId) -> PathBuf {
        self.transfers.join(id.as_str())
    }

    fn temp_path(&self, prefix: &str) -> PathBuf {
        self.tmp
            .join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
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

/// Hashes and writes `buf` on a blocking thread.
async fn flush(sink: Sink, buf: Bytes) -> Result<Sink> {
    let (sink, r) = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        sink.hasher.update(&buf);
        let r = sink.file.write_all(&buf);
        (sink, r)
    })
    .await
    .map_err(|e| task("writing a blob", e))?;
    r.map_err(|e| io("writing a blob temp file", e))?;
    Ok(sink)
}

#[async_trait]
impl BlobBackend for LocalDirBlobs {
    async fn receive(&self, mut data: ByteStream, expect: BlobExpect<'_>) -> Result<Staged> {
        let path = self.temp_path("blob");
        let open_path = path.clone();
        let file = blocking("creating a blob temp file", move || {
            File::options()
                .write(true)
                .create_new(true)
                .open(&open_path)
        })
        .await?;
        // From here on the temp file is removed on every early return.
        let mut staged = Self::staged(
            path,
            BlobInfo {
                sha256: Sha256Digest::of(b""),
                size_bytes: 0,
            },
        );
        let mut sink = Sink {
            file,
            hasher: Sha256::new(),
        };
        let mut size: u64 = 0;
        let mut buf = BytesMut::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| Error::io("reading upload", e))?;
            if size + chunk.len() as u64 > expect.max_bytes {
                return Err(Error::rejected(
                    RejectReason::TooLarge,
                    None,
                    format!("upload exceeds the limit of {} bytes", expect.max_bytes),
                ));
            }
            size += chunk.len() as u64;
            if buf.is_empty() && chunk.len() >= WRITE_BUFFER {
                sink = flush(sink, chunk).await?;
                continue;
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_BUFFER {
                sink = flush(sink, buf.split().freeze()).await?;
            }
        }
        if !buf.is_empty() {
            sink = flush(sink, buf.freeze()).await?;
        }
        let info = BlobInfo {
            sha256: Sha256Digest::from_bytes(&sink.hasher.finalize().into()),
            size_bytes: size,
        };
        check_blob_expectations(&info, expect)?;
        let file = sink.file;
        blocking("fsyncing a blob", move || file.sync_all()).await?;
        staged.info = info;
        Ok(staged)
    }

    async fn stage_chunk(&self, data: Bytes) -> Result<Staged> {
        let path = self.temp_path("chunk");
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
        let to = self.blob_path(&staged.info.sha256);
        Self::install(staged, to).await
    }

    async fn install_chunk(&self, staged: Staged, transfer: &TransferId, index: u64) -> Result<()> {
        let to = self.transfer_dir(transfer).join(index.to_string());
        Self::install(staged, to).await
    }

    async fn read_chunk(&self, transfer: &TransferId, index: u64) -> Result<Vec<u8>> {
        let path = self.transfer_dir(transfer).join(index.to_string());
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| task("reading a chunk", e))?
            .map_err(|e| io("reading a stored chunk", e))
    }

    async fn open_blob(&self, sha256: &Sha256Digest) -> Result<BlobReader> {
        let path = self.blob_path(sha256);
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
        let path = self.blob_path(sha256);
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
        let blobs = self.blobs.clone();
        blocking("listing blobs", move || {
            let mut out = Vec::new();
            for prefix in entries(&blobs)? {
                if !prefix.file_type()?.is_dir() {
                    continue;
                }
                for file in entries(&prefix.path())? {
                    let name = format!(
                        "{}{}",
                        prefix.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    // Only files that are blobs by name: anything else is not ours.
                    let Ok(digest) = Sha256Digest::parse(&name) else {
                        continue;
                    };
                    if digest.as_str() == name && file.metadata().is_ok_and(|m| older_than(&m, age))
                    {
                        out.push(digest);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn open_chunks(&self, transfer: &TransferId, lens: Vec<u64>) -> Result<BlobReader> {
        let dir = self.transfer_dir(transfer);
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
        let dir = self.transfer_dir(transfer);
        let parent = self.transfers.clone();
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
        let transfers = self.transfers.clone();
        blocking("listing transfers", move || {
            Ok(entries(&transfers)?
                .into_iter()
                .filter_map(|e| TransferId::parse(&e.file_name().to_string_lossy()).ok())
                .collect())
        })
        .await
    }

    async fn sweep_staging(&self, age: Duration) -> Result<u64> {
        let tmp = self.tmp.clone();
        blocking("sweeping temp files", move || {
            let mut deleted = 0;
            for entry in entries(&tmp)? {
                let Ok(meta) = entry.metadata() else { continue };
                if !older_than(&meta, age) {
                    continue;
                }
                let r = if meta.is_dir() {
                    std::fs::remove_dir_all(entry.path())
                } else {
                    std::fs::remove_file(entry.path())
                };
                match r {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(deleted)
        })
        .await
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
