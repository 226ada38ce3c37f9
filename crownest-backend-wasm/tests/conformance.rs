//! The core backend conformance suite against the wasm backend.
#![allow(clippy::unwrap_used)]

mod common;

crownest_core::backend_conformance!(async {
    crownest_core::conformance::BackendHarness::new(common::backend_arc(), common::programs())
});
