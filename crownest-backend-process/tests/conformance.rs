//! The backend conformance suite of crownest-core, on real host processes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crownest_backend_process::{ProcessBackend, ProcessConfig};
use crownest_core::conformance::{BackendHarness, Programs};

/// All conformance sandboxes share one root: `sweep_orphans` only ever touches sandboxes
/// whose owner process is gone, so parallel cases cannot disturb each other.
fn root() -> std::path::PathBuf {
    std::env::temp_dir().join("crownest-process-conformance")
}

crownest_core::backend_conformance!(async {
    let backend = ProcessBackend::new(ProcessConfig::with_root(root())).unwrap();
    BackendHarness::new(Arc::new(backend), Programs::python3())
});
