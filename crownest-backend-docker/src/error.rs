//! Errors of the Docker backend, mapped into [`crownest_core::Error::Backend`].

use crownest_core::Error;

/// What went wrong talking to Docker. Its `Display` prints only its own level; the bollard
/// error is the `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The engine could not be reached or refused the version negotiation.
    #[error("cannot reach the Docker engine at {endpoint}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The template image is not on this host.
    #[error(
        "image {image} is missing: `crownest setup docker` (or scripts/build-docker-image.sh in \
         a source checkout) builds the python-node image; build or load any other on this \
         host, nothing is pulled"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// A Docker API call failed.
    #[error("docker {operation} failed")]
    Api {
        /// The operation (`create container`, `upload archive`, ...).
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The command's output stream broke before its end: some output may be missing.
    #[error(
        "the command's output stream from Docker broke before its end ({detail}); output may be missing"
    )]
    OutputBroken {
        /// What the stream did.
        detail: String,
    },
    /// The workspace could not be handed to the container's launcher.
    #[error("the workspace could not be written into the container: {detail}")]
    WorkspaceTransfer {
        /// What happened (with what the container printed).
        detail: String,
    },
    /// Something of a destroyed sandbox is still there.
    #[error("{what} still exists after destroy")]
    Survived {
        /// What survived (`container <id>`, `volume <name>`).
        what: String,
    },
    /// The sandbox is in a state that does not allow the operation.
    #[error("{0}")]
    State(String),
    /// Host-side I/O (staging, streaming).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl DockerError {
    /// Wraps a bollard error of `operation`.
    pub(crate) fn api(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| Self::Api { operation, source }
    }
}

impl From<DockerError> for Error {
    fn from(e: DockerError) -> Self {
        Error::backend(crate::BACKEND, e)
    }
}

/// The HTTP status of a Docker error response, if it is one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// True when Docker answered 404 (no such container, volume or image).
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    status_of(e) == Some(404)
}
