//! The `Store` conformance suite from `crownest-core`, against a fresh `SqliteStore` per case.
#![allow(clippy::unwrap_used)]

mod common;

crownest_core::store_conformance!(async {
    std::sync::Arc::new(common::TempStore::open().await) as std::sync::Arc<dyn crownest_core::Store>
});
