//! Mapping of SQLite and I/O failures into [`crownest_core::Error`], and the poison flag.
//!
//! Any I/O or SQLite failure while *writing* poisons the store: the on-disk state is then
//! whatever the last committed transaction left (SQLite guarantees that much), but this
//! process no longer knows whether a blob rename, a directory fsync or a transaction it
//! was in the middle of took effect. Rather than retry silently, every later write fails
//! with `Error::Store` ("store poisoned", the first failure as its `source()`); reads keep
//! working. Reopening the store
//! (a new [`crate::SqliteStore`]) starts from the durable state again.

use std::sync::Mutex;

use crownest_core::Error;

/// An `Error::Store` for a failed SQLite call.
pub(crate) fn db(context: &str, e: rusqlite::Error) -> Error {
    Error::store(context, e)
}

/// An `Error::Store` for a failed filesystem call.
pub(crate) fn io(context: &str, e: std::io::Error) -> Error {
    Error::store(context, e)
}

/// An `Error::Store` for a stored row that does not parse (a damaged or foreign database).
pub(crate) fn corrupt(context: &str, e: serde_json::Error) -> Error {
    Error::store(format!("stored {context} does not parse"), e)
}

/// True for `SQLITE_BUSY` / `SQLITE_LOCKED`: another connection holds the lock.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The message of every error of a poisoned store (its `source()` says why).
const POISONED: &str = "store poisoned";

/// A cause kept as text: the chain of an error that went elsewhere (the first failure of a
/// poisoned store went to the write that failed; a failed batch's cause is given to each of
/// its writes).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Cause(pub(crate) String);

/// The first write failure of this store instance, once there is one.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    first: Mutex<Option<String>>,
}

impl Poison {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.first.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(Error::Store)` once poisoned: "store poisoned", the first failure as its source.
    pub(crate) fn check(&self) -> crownest_core::Result<()> {
        match &*self.lock() {
            None => Ok(()),
            Some(first) => Err(Error::Store {
                message: POISONED.into(),
                source: Some(Box::new(Cause(first.clone()))),
            }),
        }
    }

    /// Poisons the store with `err` (the first failure wins) and returns the error to report
    /// for the write that failed: "store poisoned", `err` as its source.
    pub(crate) fn poison(&self, err: Error) -> Error {
        let mut g = self.lock();
        if g.is_none() {
            *g = Some(err.chain());
        }
        Error::Store {
            message: POISONED.into(),
            source: Some(Box::new(err)),
        }
    }

    /// True once poisoned.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.lock().is_some()
    }
}

/// A failure to inject (tests only): see [`crate::SqliteStore::inject_fault`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next write transaction fails just before `COMMIT`, as a disk I/O error would.
    WriteTransaction,
    /// The next write of bytes into a blob or chunk temp file fails.
    BlobWrite,
}

/// Pending injected faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pending: Mutex<Vec<Fault>>,
}

impl Faults {
    pub(crate) fn add(&self, f: Fault) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// Consumes a pending fault of this kind; `Err` with an injected I/O error when there was one.
    pub(crate) fn trip(&self, f: Fault) -> std::io::Result<()> {
        let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match g.iter().position(|p| *p == f) {
            None => Ok(()),
            Some(i) => {
                g.remove(i);
                Err(std::io::Error::other(format!("injected fault: {f:?}")))
            }
        }
    }
}

/// The failure of one write operation inside the writer: `Logical` (a refused commit, an
/// unknown id: rolled back to its savepoint, the rest of the batch goes on) or `Fatal` (an
/// I/O or SQLite failure: the whole batch rolls back and the store is poisoned).
#[derive(Debug)]
pub(crate) enum OpError {
    Logical(Error),
    Fatal(Error),
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        Self::Logical(e)
    }
}

impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Logical(e) | OpError::Fatal(e) => e,
        }
    }
}

/// `?`-friendly context for SQLite and filesystem results: failures are [`OpError::Fatal`].
pub(crate) trait Fatal<T> {
    fn fatal(self, context: &str) -> Result<T, OpError>;
}

impl<T> Fatal<T> for rusqlite::Result<T> {
    fn fatal(self, context: &str) -> Result<T, OpError> {
        self.map_err(|e| OpError::Fatal(db(context, e)))
    }
}

impl<T> Fatal<T> for std::io::Result<T> {
    fn fatal(self, context: &str) -> Result<T, OpError> {
        self.map_err(|e| OpError::Fatal(io(context, e)))
    }
}

/// Serializes a value for a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, OpError> {
    serde_json::to_string(v)
        .map_err(|e| OpError::Logical(Error::store(format!("serializing {what}"), e)))
}

/// Parses a JSON column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, OpError> {
    serde_json::from_str(s).map_err(|e| OpError::Logical(corrupt(what, e)))
}
