//! The core backend conformance suite against the real Docker engine.
//!
//! Without `CROWNEST_REQUIRE_DOCKER=1`, a missing engine or image skips each case (the
//! factory returns from the test early); with it, each case fails.
#![allow(clippy::unwrap_used)]

mod common;

crownest_core::backend_conformance!(match common::harness().await {
    Some(h) => ::std::future::ready(h),
    None => return,
});
