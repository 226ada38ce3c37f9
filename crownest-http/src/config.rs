//! [`HttpConfig`].

use std::sync::Arc;
use std::time::Duration;

use crownest_core::WorkspaceRuns;
use crownest_core::signing::HostKey;

use crate::tokens::TokenSet;

/// The name of the host-process backend, off on a server unless named: the same string as
/// `crownest_backend_process::BACKEND` (this crate does not depend on that backend; a unit
/// test checks the two agree).
pub const PROCESS_BACKEND: &str = "process";

/// Configuration of the API router. Defaults: no token (set one for anything but tests on
/// loopback; `crownest serve` refuses a non-loopback address without one), every
/// registered backend but `process` may be chosen, 1 MiB JSON bodies, a keep-alive comment
/// every 15 s on SSE streams.
///
/// **Authentication.** With neither [`token`](Self::token) nor [`tokens`](Self::tokens)
/// set, no request is authenticated. Otherwise every route but `/healthz` needs
/// `Authorization: Bearer <token>`: the single `token` (all scopes), or one of `tokens`
/// (hashed, with scopes: see [`crate::tokens`]); a missing or unknown token is 401
/// `unauthorized`, a token without the route's scope 403 `forbidden`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A single bearer token with every scope (`admin`).
    pub token: Option<String>,
    /// Tokens with scopes, stored as sha256 hashes (a tokens file: [`TokenSet::load`]).
    pub tokens: TokenSet,
    /// The backends a create request may choose (by name, explicitly or through the
    /// engine's default backend); any other is refused with 400 `backend_not_allowed`.
    /// `None` (the default): every backend registered in the engine except `process`,
    /// which runs commands as host processes of the server's user and is no security
    /// boundary: a server offers it only when it is named here.
    pub allowed_backends: Option<Vec<String>>,
    /// Largest JSON body.
    pub json_body_limit: usize,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive: Duration,
    /// The ed25519 host key that signs `GET /v1/runs/{id}/evidence?format=dsse`, and whose
    /// public half `GET /v1/host-key` gives. Without one both answer 404 `no_host_key`.
    pub signing_key: Option<Arc<HostKey>>,
    /// How long a `/readyz` answer is reused (probes more often than this cost nothing).
    /// Default: 5 s.
    pub readiness_cache: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            token: None,
            tokens: TokenSet::new(),
            allowed_backends: None,
            json_body_limit: 1024 * 1024,
            sse_keep_alive: crate::routes::DEFAULT_KEEP_ALIVE,
            signing_key: None,
            readiness_cache: crate::readiness::CACHE_FOR,
        }
    }
}

impl HttpConfig {
    /// Requires this bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Accepts these tokens (each with its scopes).
    pub fn with_tokens(mut self, tokens: TokenSet) -> Self {
        self.tokens = tokens;
        self
    }

    /// Lets clients choose exactly these backends (`process` included only if named).
    pub fn with_backends<I, S>(mut self, backends: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_backends = Some(backends.into_iter().map(Into::into).collect());
        self
    }

    /// The backends a client of `engine` may choose under this configuration, sorted.
    pub fn allowed_backends_of(&self, engine: &WorkspaceRuns) -> Vec<String> {
        let mut out: Vec<String> = match &self.allowed_backends {
            Some(list) => list
                .iter()
                .filter(|b| engine.backends().contains_key(b.as_str()))
                .cloned()
                .collect(),
            None => engine
                .backends()
                .keys()
                .filter(|b| b.as_str() != PROCESS_BACKEND)
                .cloned()
                .collect(),
        };
        out.sort();
        out.dedup();
        out
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_backend_name_is_the_backends_own() {
        assert_eq!(super::PROCESS_BACKEND, crownest_backend_process::BACKEND);
    }
}
