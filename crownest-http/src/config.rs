//! [`HttpConfig`].

use std::time::Duration;

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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            token: None,
            json_body_limit: 1024 * 1024,
            sse_keep_alive: crate::routes::DEFAULT_KEEP_ALIVE,
        }
    }
}

impl HttpConfig {
    /// Requires this bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A random 32-byte hex token.
    pub fn generate_token() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }
}
