//! Uploads: the direct upload, attach and dedupe by digest, staged transfers, and the
//! one call that picks the best of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use crownest_core::{
    ArchiveDescriptor, ChunkRejectReason, Error, RunId, RunRecord, Sha256Digest, TransferStatus,
};
use futures::StreamExt as _;

use super::{Client, MAX_CHUNK_BYTES, Result, UploadProgress, transport};

/// Where an upload reads the archive from.
enum Source {
    Memory(Bytes),
    File {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
}

impl Source {
    /// The bytes `start..end`.
    async fn read(&self, start: u64, end: u64) -> Result<Bytes> {
        match self {
            Source::Memory(b) => Ok(b.slice(
                usize::try_from(start).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(0),
            )),
            Source::File { file, path } => {
                let file = file.clone();
                let len = usize::try_from(end - start).unwrap_or(usize::MAX);
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt as _;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, start)
                        .map(|()| Bytes::from(buf))
                })
                .await
                .map_err(|e| Error::io("reading the archive", std::io::Error::other(e)))?
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))
            }
        }
    }

    /// The whole archive as a request body (a file is streamed, not loaded).
    async fn body(&self, progress: Option<UploadProgress>) -> Result<reqwest::Body> {
        match self {
            Source::Memory(b) => Ok(b.clone().into()),
            Source::File { path, file } => {
                // The very file that was hashed (not the path again), read from its start.
                use tokio::io::AsyncSeekExt as _;
                let std_file = file
                    .try_clone()
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let mut file = tokio::fs::File::from_std(std_file);
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let mut sent = 0u64;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(
                    move |chunk| {
                        if let (Some(p), Ok(bytes)) = (&progress, chunk) {
                            sent += bytes.len() as u64;
                            p(sent);
                        }
                    },
                );
                Ok(reqwest::Body::wrap_stream(stream))
            }
        }
    }
}

/// The size and sha256 of a file, read once from its start.
fn describe(file: &std::fs::File) -> std::io::Result<ArchiveDescriptor> {
    use sha2::Digest as _;
    use std::os::unix::fs::FileExt as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let digest: [u8; 32] = hasher.finalize().into();
    Ok(ArchiveDescriptor {
        size_bytes: offset,
        sha256: Sha256Digest::from_bytes(&digest),
    })
}

impl Client {
    /// `PUT /v1/runs/{id}/archive` (direct upload): `body` is the archive's bytes (a
    /// [`Bytes`], or a streamed [`reqwest::Body`] of exactly `desc.size_bytes`).
    pub async fn upload_archive(
        &self,
        id: &RunId,
        desc: &ArchiveDescriptor,
        body: impl Into<reqwest::Body>,
    ) -> Result<RunRecord> {
        let r = self
            .req(reqwest::Method::PUT, &format!("/v1/runs/{id}/archive"))
            .header("X-Archive-Sha256", desc.sha256.as_str())
            .header(reqwest::header::CONTENT_LENGTH, desc.size_bytes)
            .body(body);
        self.json(r).await
    }

    /// `HEAD /v1/archives/{sha256}`: the stored size, if stored.
    pub async fn has_archive(&self, sha256: &Sha256Digest) -> Result<Option<u64>> {
        let resp = self
            .req(reqwest::Method::HEAD, &format!("/v1/archives/{sha256}"))
            .send()
            .await
            .map_err(transport)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(super::api_error(resp.status(), b""));
        }
        Ok(resp
            .headers()
            .get("x-archive-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// `POST /v1/runs/{id}/archive/attach`.
    pub async fn attach_archive(&self, id: &RunId, desc: &ArchiveDescriptor) -> Result<RunRecord> {
        self.json(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/runs/{id}/archive/attach"),
            )
            .json(desc),
        )
        .await
    }

    /// `POST /v1/runs/{id}/transfers`.
    pub async fn begin_transfer(
        &self,
        id: &RunId,
        desc: &ArchiveDescriptor,
    ) -> Result<TransferStatus> {
        self.json(
            self.req(reqwest::Method::POST, &format!("/v1/runs/{id}/transfers"))
                .json(desc),
        )
        .await
    }

    /// `PUT /v1/transfers/{tid}?offset=N`, with the chunk's sha256 in `Content-Digest`
    /// (RFC 9530), so a chunk corrupted on the way is refused (409 `chunk_rejected`,
    /// `digest_mismatch`) instead of stored.
    pub async fn put_chunk(
        &self,
        tid: &crownest_core::TransferId,
        offset: u64,
        data: Bytes,
    ) -> Result<TransferStatus> {
        let digest = crate::digest::content_digest_of(&Sha256Digest::of(&data));
        let r = self
            .req(reqwest::Method::PUT, &format!("/v1/transfers/{tid}"))
            .query(&[("offset", offset)])
            .header("Content-Digest", digest)
            .body(data);
        self.json(r).await
    }

    /// `GET /v1/transfers/{tid}`.
    pub async fn transfer_status(&self, tid: &crownest_core::TransferId) -> Result<TransferStatus> {
        self.json(self.req(reqwest::Method::GET, &format!("/v1/transfers/{tid}")))
            .await
    }

    /// `POST /v1/transfers/{tid}/complete`.
    pub async fn complete_transfer(&self, tid: &crownest_core::TransferId) -> Result<RunRecord> {
        self.json(self.req(
            reqwest::Method::POST,
            &format!("/v1/transfers/{tid}/complete"),
        ))
        .await
    }

    /// Uploads a whole archive the best way: attach by digest when the server already has
    /// it, one direct upload when small, else a staged transfer whose chunks are retried
    /// (each chunk up to 5 times) and which resumes from the server's missing ranges.
    pub async fn upload(&self, id: &RunId, archive: Bytes) -> Result<RunRecord> {
        let desc = ArchiveDescriptor {
            size_bytes: archive.len() as u64,
            sha256: Sha256Digest::of(&archive),
        };
        self.upload_from(id, &desc, &Source::Memory(archive), None)
            .await
    }

    /// [`upload`](Self::upload) of the archive in the file at `path`, read in pieces: at
    /// most one chunk (`chunkSizeBytes`, 8 MiB by default, at most [`MAX_CHUNK_BYTES`]) is in memory at a time, and a
    /// direct upload streams the file. The file is hashed first, so the digest the server
    /// is told (and may dedupe by) is the file's own; when `expected` is given and the file
    /// differs from it, the upload is refused with the same typed
    /// [`Error::ArchiveRejected`] (`size_mismatch` / `digest_mismatch`) the server would
    /// give, before a byte is sent. `progress` is called with the number of bytes sent so
    /// far (and with the whole size when the server already had the archive).
    pub async fn upload_file(
        &self,
        id: &RunId,
        path: &Path,
        expected: Option<&ArchiveDescriptor>,
        progress: Option<UploadProgress>,
    ) -> Result<RunRecord> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let file = Arc::new(file);
        let desc = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || describe(&file))
                .await
                .map_err(|e| Error::io("hashing the archive", std::io::Error::other(e)))?
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        };
        if let Some(expected) = expected {
            expected.check(desc.size_bytes, &desc.sha256)?;
        }
        let source = Source::File {
            path: path.to_path_buf(),
            file,
        };
        self.upload_from(id, &desc, &source, progress).await
    }

    async fn upload_from(
        &self,
        id: &RunId,
        desc: &ArchiveDescriptor,
        source: &Source,
        progress: Option<UploadProgress>,
    ) -> Result<RunRecord> {
        let report = |n: u64| {
            if let Some(p) = &progress {
                p(n);
            }
        };
        if self.has_archive(&desc.sha256).await? == Some(desc.size_bytes) {
            let record = self.attach_archive(id, desc).await?;
            report(desc.size_bytes);
            return Ok(record);
        }
        if desc.size_bytes <= self.direct_upload_max_bytes {
            let record = self
                .upload_archive(id, desc, source.body(progress.clone()).await?)
                .await?;
            report(desc.size_bytes);
            return Ok(record);
        }
        let mut status = self.begin_transfer(id, desc).await?;
        // The server picks the chunk size; a client holds one chunk in memory at a time, so
        // it refuses absurd sizes rather than allocate them.
        if status.chunk_size_bytes == 0 || status.chunk_size_bytes > MAX_CHUNK_BYTES {
            return Err(Error::Conflict {
                message: format!(
                    "the server asks for chunks of {} bytes; this client sends 1 to {MAX_CHUNK_BYTES}",
                    status.chunk_size_bytes
                ),
            });
        }
        for _round in 0..5 {
            for [start, end] in status.missing.clone() {
                // Ranges outside the archive are the server's mistake: skip them.
                let end = end.min(desc.size_bytes);
                let mut offset = start;
                while offset < end {
                    let stop = offset.saturating_add(status.chunk_size_bytes).min(end);
                    let chunk = source.read(offset, stop).await?;
                    match self.put_chunk(&status.transfer_id, offset, chunk).await {
                        Ok(s) => report(s.bytes_received),
                        // The server holds other bytes at this offset: sending ours again
                        // cannot fix that.
                        Err(
                            e @ Error::ChunkRejected {
                                reason: ChunkRejectReason::Conflict,
                                ..
                            },
                        ) => return Err(e),
                        Err(e) => {
                            tracing::warn!(offset, error = %e, "chunk upload failed; will retry");
                        }
                    }
                    offset = stop;
                }
            }
            status = self.transfer_status(&status.transfer_id).await?;
            if status.complete {
                return self.complete_transfer(&status.transfer_id).await;
            }
        }
        Err(Error::Conflict {
            message: format!(
                "transfer {} still misses {:?}",
                status.transfer_id, status.missing
            ),
        })
    }
}
