//! The conformance suites against the reference implementations in core:
//! `MemoryStore` and the scripted `FakeBackend`.

mod memory_store {
    crownest_core::store_conformance!(async {
        std::sync::Arc::new(crownest_core::MemoryStore::new())
            as std::sync::Arc<dyn crownest_core::Store>
    });
}

mod fake_backend {
    use crownest_core::conformance::{BackendHarness, Programs};
    crownest_core::backend_conformance!(async {
        BackendHarness::new(
            std::sync::Arc::new(crownest_core::testing::FakeBackend::new()),
            Programs::fake(),
        )
    });
}
