//! Errors of the wasm backend, mapped into [`crownest_core::Error::Backend`].

use std::path::PathBuf;

/// What went wrong inside the wasm backend. Its `Display` names only its own level; the
/// cause is in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WasmError {
    /// wasmtime refused something (engine setup, compilation, linking, instantiation).
    #[error("wasmtime failed while {context}")]
    Engine {
        /// What was being done.
        context: String,
        /// wasmtime's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A host I/O operation failed.
    #[error("i/o error while {context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A module file changed after it was verified.
    #[error("{} changed: sha256 {actual}, expected {expected}", path.display())]
    ModuleChanged {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// What the file hashes to now.
        actual: String,
    },
}

impl WasmError {
    /// A closure turning a wasmtime error into [`WasmError::Engine`].
    pub(crate) fn engine(context: impl Into<String>) -> impl FnOnce(wasmtime::Error) -> Self {
        let context = context.into();
        move |e| Self::Engine {
            context,
            source: e.into_boxed_dyn_error(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl From<WasmError> for crownest_core::Error {
    fn from(e: WasmError) -> Self {
        crownest_core::Error::Backend {
            backend: crate::BACKEND.to_owned(),
            source: Box::new(e),
        }
    }
}
