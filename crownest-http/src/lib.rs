//! # crownest-http
//!
//! The CrowNest API over HTTP + SSE: an axum [`Router`](axum::Router) that a host
//! application mounts to expose a [`WorkspaceRuns`](crownest_core::WorkspaceRuns) engine,
//! and (feature `client`) a typed [`Client`].
//!
//! ```no_run
//! # async fn demo(engine: crownest_core::WorkspaceRuns) -> std::io::Result<()> {
//! use crownest_http::{HttpConfig, router};
//! let app = router(engine, HttpConfig::default().with_token("s3cret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7700").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/runs` | create (RunSpec; `Idempotency-Key`) → 201 |
//! | `GET /v1/runs`, `GET /v1/runs/{id}` | list (`status`, `backend`, `label`, `createdAfter`, `createdBefore`, `limit`, `cursor`), get |
//! | `DELETE /v1/runs/{id}` | delete an ended run with its events and evidence (admin; retention) |
//! | `PUT /v1/runs/{id}/archive` | direct upload (`X-Archive-Sha256`, `Content-Length`); 413 / 422 |
//! | `HEAD /v1/archives/{sha256}`, `POST /v1/runs/{id}/archive/attach` | dedupe by digest |
//! | `POST /v1/runs/{id}/transfers`, `PUT /v1/transfers/{tid}?offset=N`, `GET /v1/transfers/{tid}`, `POST /v1/transfers/{tid}/complete` | staged transfer |
//! | `POST /v1/runs/{id}/start`, `POST /v1/runs/{id}/cancel` | lifecycle |
//! | `GET /v1/runs/{id}/events` | bounded window (`afterSeq`, `limit`) |
//! | `GET /v1/runs/{id}/events/stream` | SSE: replay, follow, keep-alive, close after `terminal`; `Last-Event-ID` |
//! | `GET /v1/runs/{id}/evidence` | Evidence Bundle (`format=in-toto`, or `format=dsse`: signed by the host key); 409 before the end |
//! | `GET /v1/host-key` | the ed25519 public key that signs `format=dsse` evidence; 404 without one |
//! | `GET /v1/artifacts/{id}` | artifact bytes, `X-Artifact-Sha256` |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/openapi.json` | ops: liveness, readiness (store writable, backends usable; no token), Prometheus text (admin) |
//!
//! **Observability.** Every response carries `X-Request-Id` (the client's, when it is 1–128
//! visible ASCII characters, else a new UUID v7); each request runs in a `request` span
//! with that id and ends with one access log line (target `crownest::access`). Metrics go
//! through the `metrics` facade; [`metrics::prometheus_handle`] installs the Prometheus
//! recorder `/metrics` renders.
//!
//! **Policy** ([`HttpConfig`]). `allowed_backends` lists the backends a create may choose
//! (default: every registered one but `process`, which runs host processes and is offered
//! only when named; another is 400 `backend_not_allowed`). `tokens` ([`TokenSet`], a file
//! of sha256 hashes with [`Scope`]s `read`, `submit`, `admin`) and the single admin
//! `token` authenticate requests (401 `unauthorized`, 403 `forbidden`). A template the
//! backend does not offer is 400 `invalid_spec` at create, and an `Idempotency-Key` reused
//! with a different body 422 `idempotency_key_reused`.
//!
//! Every error is an [`ErrorBody`], `{"error": {"code", "message", ...}}`, the framework's
//! own refusals included; the client reads it back into the engine's error. The contract is
//! [`openapi::json`], generated from the code and served at `/v1/openapi.json`. A slow SSE client never blocks a run:
//! each stream reads the store at its own pace (see `WorkspaceRuns::subscribe`).
//!
//! **Secrets.** `POST /v1/runs` takes `env` (plain settings, recorded with their values)
//! and `secrets` (name → value: passed to the command, masked as `***` in output, never
//! stored). No response carries a secret value: run records (create, get, list) and
//! evidence name secrets in `secretNames` only. Masking guards against accidental echo
//! only; a command can always reveal a value it was given (reversed, base64, in an
//! artifact). The secret values live in the memory of the server that created the run
//! until `start`; start the run on that server. Serve over TLS (or loopback) when secrets
//! travel: the request body carries them in clear.

mod config;
pub mod digest;
mod error;
mod extract;
pub mod metrics;
pub mod observe;
pub mod openapi;
mod readiness;
mod routes;
pub mod tokens;
pub mod wire;

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{Client, MAX_CHUNK_BYTES, UploadProgress};
pub use config::{HttpConfig, PROCESS_BACKEND};
pub use error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
pub use routes::{ROUTES, router};
pub use tokens::{Scope, TokenEntry, TokenSet};
pub use wire::RunPage;
