//! # CrowNest
//!
//! Run untrusted, repo-shaped work in a sandbox and keep a durable, verifiable record of
//! what happened. This facade re-exports the member crates; see [`core`] for the model.

pub use crownest_core as core;
pub use crownest_core::*;
