//! [`Client`]: a typed async client of the API (feature `client`).

mod events;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::signing::{DsseEnvelope, HostPublicKey};
use crownest_core::store::RunQuery;
use crownest_core::{Error, EvidenceBundle, RunId, RunRecord, RunSpec, RunStatus};
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::wire::{HostKeyInfo, RunPage};

type Result<T> = std::result::Result<T, Error>;

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

fn transport(e: reqwest::Error) -> Error {
    Error::Io {
        context: "http request".into(),
        source: std::io::Error::other(e),
    }
}

/// A page size the server accepts (1 to 500: it refuses others).
fn page_size(limit: usize) -> usize {
    limit.clamp(1, 500)
}

/// The engine error an error response stands for ([`ErrorBody::to_error`]).
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> Error {
    ErrorBody::from_response(status.as_u16(), body).to_error(status.as_u16())
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
        let body = resp.bytes().await.unwrap_or_default();
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

    /// `GET /metrics` (admin scope): the Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        let r = self.req(reqwest::Method::GET, "/metrics");
        self.send(r).await?.text().await.map_err(transport)
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
        let mut q: Vec<(&str, String)> = vec![("limit", page_size(limit).to_string())];
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
            q.push(("limit", page_size(query.limit).to_string()));
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
        match self
            .json::<HostKeyInfo>(self.req(reqwest::Method::GET, "/v1/host-key"))
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
}
