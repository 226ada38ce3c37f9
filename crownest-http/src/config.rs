//! [`HttpConfig`].

use std::sync::Arc;
use std::time::Duration;

use crownest_core::signing::HostKey;

/// Configuration of the API router. Defaults: no token (set one for anything but tests on
/// loopback; `crownest serve` refuses a non-loopback address without one), 1 MiB JSON
/// bodies, a keep-alive comment every 15 s on SSE streams.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bearer token required on every route but `/healthz`.
    pub token: Option<String>,
    /// Largest JSON body.
    pub json_body_limit: usize,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive: Duration,
    /// The ed25519 host key that signs `GET /v1/runs/{id}/evidence?format=dsse`, and whose
    /// public half `GET /v1/host-key` gives. Without one both answer 404 `no_host_key`.
    pub signing_key: Option<Arc<HostKey>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            token: None,
            json_body_limit: 1024 * 1024,
            sse_keep_alive: crate::routes::DEFAULT_KEEP_ALIVE,
            signing_key: None,
        }
    }
}

impl HttpConfig {
    /// Requires this bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Signs evidence with this host key.
    pub fn with_signing_key(mut self, key: HostKey) -> Self {
        self.signing_key = Some(Arc::new(key));
        self
    }

    /// A random 32-byte hex token.
    pub fn generate_token() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }
}
