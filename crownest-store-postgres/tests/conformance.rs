//! The `Store` conformance suite from `crownest-core`, against a real PostgreSQL server: a
//! fresh schema and blob directory per case.
//!
//! Without `CROWNEST_REQUIRE_POSTGRES=1`, a missing server skips each case (the factory
//! returns from the test early, printing why); with it, each case fails.
#![allow(clippy::unwrap_used)]

mod common;

crownest_core::store_conformance!(match common::TempStore::open().await {
    Some(s) =>
        ::std::future::ready(::std::sync::Arc::new(s) as ::std::sync::Arc<dyn crownest_core::Store>),
    None => return,
});
