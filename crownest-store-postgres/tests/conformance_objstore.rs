//! The `Store` conformance suite from `crownest-core` again, with the blobs behind the
//! `object_store` backend (`file://` → `LocalFileSystem`): a fresh schema and bucket
//! directory per case.
//!
//! Without `CROWNEST_REQUIRE_POSTGRES=1`, a missing server skips each case; with it, each
//! case fails.
#![allow(clippy::unwrap_used)]

mod common;

crownest_core::store_conformance!(match common::TempStore::open_object_store().await {
    Some(s) => {
        assert!(
            s.blob_stream_stats().is_some(),
            "the object-store backend is in use"
        );
        ::std::future::ready(::std::sync::Arc::new(s) as ::std::sync::Arc<dyn crownest_core::Store>)
    }
    None => return,
});
