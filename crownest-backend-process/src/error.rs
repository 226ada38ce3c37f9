//! This backend's errors, mapped into [`crownest_core::Error`] (`Backend { backend:
//! "process", source }`, `Io`, `InvalidSpec`).

use crownest_core::Error;

use crate::BACKEND;

/// What went wrong inside the process backend (the `source` of `Error::Backend`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The sandbox root directory is unusable.
    #[error("sandbox root {path}: {message}")]
    Root {
        /// The root directory.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The configured containment does not work on this host.
    #[error("{0}")]
    Containment(String),
    /// The sandbox was already destroyed.
    #[error("sandbox {0} was destroyed")]
    Destroyed(String),
    /// An exec is already running in this sandbox.
    #[error("sandbox {0} is already running a command")]
    Busy(String),
    /// Processes survived the final kill.
    #[error("processes of sandbox {id} survived the kill: {survivors}")]
    Survivors {
        /// The sandbox.
        id: String,
        /// The processes.
        survivors: String,
    },
    /// The sandbox directory could not be removed.
    #[error("removing {path} failed")]
    Remove {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem or process call of the backend failed.
    #[error("i/o error while {context}")]
    Io {
        /// What the backend was doing.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(String),
}

impl From<ProcessError> for Error {
    fn from(e: ProcessError) -> Self {
        Error::backend(BACKEND, e)
    }
}
