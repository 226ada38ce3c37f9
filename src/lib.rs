//! # CrowNest
//!
//! Run untrusted, repo-shaped work in a sandbox and keep a durable, verifiable record of what
//! happened. This facade re-exports the member crates:
//!
//! | module | crate | what |
//! |---|---|---|
//! | (root), [`core`] | `crownest-core` | run model, events, archives, artifacts, evidence, traits, the [`WorkspaceRuns`] engine |
//! | [`sqlite`] | `crownest-store-sqlite` | the durable embedded store |
//! | [`process`] | `crownest-backend-process` | host processes (not a security boundary) |
//! | [`docker`] | `crownest-backend-docker` | containers (feature `docker`, default) |
//! | [`wasm`] | `crownest-backend-wasm` | WASI CPython and QuickJS (feature `wasm`, default) |
//! | [`http`] | `crownest-http` | HTTP + SSE router and client (feature `http`, default) |
//!
//! `examples/embed.rs` shows the library API end to end.

pub use crownest_core as core;
pub use crownest_core::*;

/// The durable embedded store.
pub use crownest_store_sqlite as sqlite;

/// The host-process backend.
pub use crownest_backend_process as process;

/// The Docker backend.
#[cfg(feature = "docker")]
pub use crownest_backend_docker as docker;

/// The WASI backend.
#[cfg(feature = "wasm")]
pub use crownest_backend_wasm as wasm;

/// The HTTP + SSE API.
#[cfg(feature = "http")]
pub use crownest_http as http;
