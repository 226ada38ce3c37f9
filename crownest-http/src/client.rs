//! [`Client`]: a typed async client of the API (feature `client`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::engine::staging::{OPEN_TRANSFERS_PER_RUN, STAGED_BYTES_PER_ENGINE};
use crownest_core::event::Event;
use crownest_core::signing::{DsseEnvelope, HostPublicKey};
use crownest_core::store::RunQuery;
use crownest_core::{
    ArchiveDescriptor, ChunkRejectReason, Error, EvidenceBundle, RejectReason, RunId, RunRecord,
    RunSpec, RunStatus, Sha256Digest, TransferStatus,
};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use serde::de::DeserializeOwned;

type Result<T> = std::result::Result<T, Error>;

/// A page of runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    /// Runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<RunId>,
}

/// A typed client of the CrowNest HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// Archives up to this size go as one direct upload; larger ones as a staged transfer.
    pub direct_upload_max_bytes: u64,
}

/// The largest chunk size a server may ask this client for (staged uploads hold one chunk
/// in memory).
pub const MAX_CHUNK_BYTES: u64 = 64 * 1024 * 1024;

/// Told how many bytes of an upload have been sent (see [`Client::upload_file`]).
pub type UploadProgress = Arc<dyn Fn(u64) + Send + Sync>;

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

fn transport(e: reqwest::Error) -> Error {
    Error::Io {
        context: "http request".into(),
        source: std::io::Error::other(e),
    }
}

/// Maps an API error body back to the engine's error type.
fn api_error(status: reqwest::StatusCode, body: &str) -> Error {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let err = &v["error"];
    let code = err["code"].as_str().unwrap_or("");
    let message = err["message"].as_str().unwrap_or(body).to_owned();
    match code {
        "not_found" | "no_route" => Error::NotFound {
            kind: "resource",
            id: message,
        },
        "no_host_key" => Error::NotFound {
            kind: "host key",
            id: message,
        },
        // The server's backend policy refused the create: rejected input, like a spec.
        "invalid_spec" | "backend_not_allowed" => Error::InvalidSpec {
            field: err["field"].as_str().unwrap_or("").to_owned(),
            message,
        },
        "archive_rejected" => Error::ArchiveRejected {
            reason: serde_json::from_value(err["reason"].clone()).unwrap_or(RejectReason::Corrupt),
            entry: err["entry"].as_str().map(str::to_owned),
            message,
        },
        "limit_exceeded" => Error::LimitExceeded {
            limit: match err["limit"].as_str() {
                Some(OPEN_TRANSFERS_PER_RUN) => OPEN_TRANSFERS_PER_RUN,
                Some(STAGED_BYTES_PER_ENGINE) => STAGED_BYTES_PER_ENGINE,
                _ => "server limit",
            },
            max: err["max"].as_u64().unwrap_or(0),
        },
        "not_enforceable" => match serde_json::from_value(err["capability"].clone()) {
            Ok(capability) => Error::NotEnforceable {
                field: err["field"].as_str().unwrap_or("").to_owned(),
                capability,
                backend: err["backend"].as_str().unwrap_or("").to_owned(),
            },
            Err(_) => Error::InvalidSpec {
                field: err["field"].as_str().unwrap_or("").to_owned(),
                message,
            },
        },
        "not_terminal" => Error::NotTerminal { run_id: message },
        "invalid_transition" => match serde_json::from_value::<RunStatus>(err["from"].clone()) {
            Ok(from) => Error::InvalidTransition {
                from,
                input: transition_input(err["input"].as_str().unwrap_or("")),
            },
            Err(_) => Error::Conflict { message },
        },
        "conflict" => Error::Conflict { message },
        "chunk_rejected" => Error::ChunkRejected {
            offset: err["offset"].as_u64().unwrap_or(0),
            reason: serde_json::from_value(err["reason"].clone())
                .unwrap_or(ChunkRejectReason::Conflict),
            message,
        },
        "transfer_incomplete" => Error::TransferIncomplete {
            transfer_id: err["transferId"].as_str().unwrap_or("").to_owned(),
            missing: serde_json::from_value(err["missing"].clone()).unwrap_or_default(),
        },
        "idempotency_key_reused" => Error::IdempotencyKeyReused {
            key: err["idempotencyKey"].as_str().unwrap_or("").to_owned(),
            run_id: err["runId"].as_str().unwrap_or("").to_owned(),
        },
        _ => Error::Backend {
            backend: format!("http {status}"),
            source: format!("{code}: {message}").into(),
        },
    }
}

/// The engine's names of state-machine inputs (`Error::InvalidTransition::input` is static).
fn transition_input(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "archive_verified",
        "start",
        "slot_acquired",
        "command_started",
        "command_ended",
        "cancel",
        "finalized",
        "host_restarted",
    ];
    KNOWN
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("request")
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7700`).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Result<Self> {
        Self::with_builder(base, token, reqwest::Client::builder())
    }

    /// A client of an `https` server whose certificate is signed by one of the CA
    /// certificates in `pem` (one or more PEM blocks; a self-signed server certificate is
    /// its own CA), trusted besides the built-in web roots.
    pub fn with_ca_pem(base: impl Into<String>, token: Option<String>, pem: &[u8]) -> Result<Self> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(transport)?;
        if certs.is_empty() {
            return Err(Error::invalid("caCert", "no PEM certificate found"));
        }
        let builder = certs
            .into_iter()
            .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c));
        Self::with_builder(base, token, builder)
    }

    fn with_builder(
        base: impl Into<String>,
        token: Option<String>,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self> {
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(transport)?;
        Ok(Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http,
            direct_upload_max_bytes: 32 * 1024 * 1024,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = r.send().await.map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(api_error(status, &body))
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T> {
        self.send(r).await?.json().await.map_err(transport)
    }

    /// `GET /healthz` (no token needed): the server's status document.
    pub async fn health(&self) -> Result<serde_json::Value> {
        let r = self.http.get(format!("{}/healthz", self.base));
        self.json(r).await
    }

    /// The server base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/runs`. The body carries the spec's `secrets` with their values
    /// ([`RunSpec::to_request_json`]); the record that comes back names them only.
    pub async fn create_run(&self, spec: &RunSpec) -> Result<RunRecord> {
        let mut r = self
            .req(reqwest::Method::POST, "/v1/runs")
            .json(&spec.to_request_json());
        if let Some(k) = &spec.idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        self.json(r).await
    }

    /// `GET /v1/runs/{id}`.
    pub async fn get_run(&self, id: &RunId) -> Result<RunRecord> {
        self.json(self.req(reqwest::Method::GET, &format!("/v1/runs/{id}")))
            .await
    }

    /// `GET /v1/runs`.
    pub async fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: usize,
        cursor: Option<&RunId>,
    ) -> Result<RunPage> {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            q.push(("status", s.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        self.json(self.req(reqwest::Method::GET, "/v1/runs").query(&q))
            .await
    }

    /// `GET /v1/runs` with every filter of `query` (status, backend, labels, creation
    /// time, `limit`, `before` as the cursor).
    pub async fn list_runs_where(&self, query: &RunQuery) -> Result<RunPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if query.limit > 0 {
            q.push(("limit", query.limit.to_string()));
        }
        if let Some(s) = query.status {
            q.push(("status", s.to_string()));
        }
        if let Some(c) = &query.before {
            q.push(("cursor", c.to_string()));
        }
        if let Some(b) = &query.backend {
            q.push(("backend", b.clone()));
        }
        for (k, v) in &query.labels {
            q.push(("label", format!("{k}={v}")));
        }
        if let Some(t) = query.created_after {
            q.push(("createdAfter", t.to_string()));
        }
        if let Some(t) = query.created_before {
            q.push(("createdBefore", t.to_string()));
        }
        self.json(self.req(reqwest::Method::GET, "/v1/runs").query(&q))
            .await
    }

    /// `DELETE /v1/runs/{id}` (admin scope): deletes an ended run with its events and
    /// evidence, for good.
    pub async fn delete_run(&self, id: &RunId) -> Result<()> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/v1/runs/{id}")))
            .await
            .map(|_| ())
    }

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
            return Err(api_error(resp.status(), ""));
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

    /// `POST /v1/runs/{id}/start`.
    pub async fn start(&self, id: &RunId) -> Result<RunRecord> {
        self.json(self.req(reqwest::Method::POST, &format!("/v1/runs/{id}/start")))
            .await
    }

    /// `POST /v1/runs/{id}/cancel`.
    pub async fn cancel(&self, id: &RunId) -> Result<RunRecord> {
        self.json(self.req(reqwest::Method::POST, &format!("/v1/runs/{id}/cancel")))
            .await
    }

    /// `GET /v1/runs/{id}/events?afterSeq=&limit=`.
    pub async fn list_events(
        &self,
        id: &RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        #[derive(Deserialize)]
        struct Window {
            events: Vec<Event>,
        }
        let r = self
            .req(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
            .query(&[("afterSeq", after_seq), ("limit", limit as u64)]);
        Ok(self.json::<Window>(r).await?.events)
    }

    /// `GET /v1/runs/{id}/evidence`.
    pub async fn evidence(&self, id: &RunId) -> Result<EvidenceBundle> {
        self.json(self.req(reqwest::Method::GET, &format!("/v1/runs/{id}/evidence")))
            .await
    }

    /// `GET /v1/runs/{id}/evidence?format=in-toto`.
    pub async fn evidence_in_toto(&self, id: &RunId) -> Result<serde_json::Value> {
        self.json(
            self.req(reqwest::Method::GET, &format!("/v1/runs/{id}/evidence"))
                .query(&[("format", "in-toto")]),
        )
        .await
    }

    /// `GET /v1/runs/{id}/evidence?format=dsse`: the in-toto view signed by the server's
    /// host key. Check it with [`DsseEnvelope::verify`] and a public key obtained out of
    /// band (or, trusting the connection, from [`host_key`](Self::host_key)).
    pub async fn evidence_dsse(&self, id: &RunId) -> Result<DsseEnvelope> {
        self.json(
            self.req(reqwest::Method::GET, &format!("/v1/runs/{id}/evidence"))
                .query(&[("format", "dsse")]),
        )
        .await
    }

    /// `GET /v1/host-key`: the server's public key (`None` when it signs nothing).
    pub async fn host_key(&self) -> Result<Option<HostPublicKey>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Key {
            public_key: String,
        }
        match self
            .json::<Key>(self.req(reqwest::Method::GET, "/v1/host-key"))
            .await
        {
            Ok(k) => HostPublicKey::parse(&k.public_key).map(Some).map_err(|e| {
                Error::io(
                    "reading the server's host key",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/artifacts/{id}`: the bytes and the sha256 header.
    pub async fn artifact(
        &self,
        id: &crownest_core::ArtifactId,
    ) -> Result<(Bytes, Option<String>)> {
        let resp = self
            .send(self.req(reqwest::Method::GET, &format!("/v1/artifacts/{id}")))
            .await?;
        let sha = resp
            .headers()
            .get("x-artifact-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((resp.bytes().await.map_err(transport)?, sha))
    }

    /// The run's events from `after_seq` over SSE, reconnecting with `Last-Event-ID` when
    /// the connection drops; ends after `terminal`, or at once (with no item) when the run
    /// has ended and nothing follows `after_seq` (the server answers 204). Each event
    /// arrives exactly once.
    pub fn events(
        &self,
        id: &RunId,
        after_seq: u64,
    ) -> Pin<Box<dyn Stream<Item = Result<Event>> + Send>> {
        struct St {
            client: Client,
            id: RunId,
            last: u64,
            body: Option<Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>>,
            buf: Vec<u8>,
            ready: VecDeque<Event>,
            done: bool,
            failures: u32,
        }
        let st = St {
            client: self.clone(),
            id: id.clone(),
            last: after_seq,
            body: None,
            buf: Vec::new(),
            ready: VecDeque::new(),
            done: false,
            failures: 0,
        };
        Box::pin(futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.ready.pop_front() {
                    if e.seq <= st.last {
                        continue;
                    }
                    st.last = e.seq;
                    if e.kind.is_terminal() {
                        st.done = true;
                    }
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                let Some(body) = st.body.as_mut() else {
                    let r = st
                        .client
                        .req(
                            reqwest::Method::GET,
                            &format!("/v1/runs/{}/events/stream", st.id),
                        )
                        .header("Last-Event-ID", st.last.to_string())
                        .header(reqwest::header::ACCEPT, "text/event-stream");
                    match st.client.send(r).await {
                        // The run has ended and nothing follows the cursor.
                        Ok(resp) if resp.status() == reqwest::StatusCode::NO_CONTENT => {
                            st.done = true;
                        }
                        Ok(resp) => {
                            st.body = Some(Box::pin(resp.bytes_stream()));
                            st.buf.clear();
                        }
                        Err(e @ (Error::NotFound { .. } | Error::InvalidSpec { .. })) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                        Err(e) => {
                            st.failures += 1;
                            if st.failures > 20 {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                            tokio::time::sleep(Duration::from_millis(
                                100 * u64::from(st.failures.min(10)),
                            ))
                            .await;
                        }
                    }
                    continue;
                };
                match body.next().await {
                    Some(Ok(chunk)) => {
                        st.failures = 0;
                        st.buf.extend_from_slice(&chunk);
                        while let Some(pos) = find_blank_line(&st.buf) {
                            let block: Vec<u8> = st.buf.drain(..pos.0).collect();
                            st.buf.drain(..pos.1);
                            if let Some(e) = parse_sse_event(&block) {
                                st.ready.push_back(e);
                            }
                        }
                    }
                    // Dropped connection (or the server closed): reconnect with Last-Event-ID.
                    Some(Err(_)) | None => st.body = None,
                }
            }
        }))
    }
}

/// Position of the end of the first SSE block and the length of its separator.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_sse_event(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut data = String::new();
    let mut kind = "message";
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = if v.trim() == "stream_error" {
                "stream_error"
            } else {
                "event"
            };
        }
    }
    if data.is_empty() || kind == "stream_error" {
        return None;
    }
    serde_json::from_str(&data).ok()
}
