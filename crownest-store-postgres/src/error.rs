//! Mapping of PostgreSQL, pool and filesystem failures into [`crownest_core::Error`].
//!
//! Every database failure is `Error::Store` naming what the store was doing, with the
//! driver's error (and its SQLSTATE) as the source, except where the failure has a meaning
//! in the contract: a duplicate `(run_id, seq)` is `Error::Conflict` (another writer
//! appended first). A transaction that failed was rolled back by PostgreSQL, so unlike the
//! SQLite store nothing here needs poisoning: the next call starts from the committed
//! state. The one unknown outcome is a connection lost *during* `COMMIT`; that error says
//! so, and reading the run again tells what happened.

use crownest_core::Error;
use tokio_postgres::error::SqlState;

/// An `Error::Store` for a failed database call.
pub(crate) fn db(context: &str, e: tokio_postgres::Error) -> Error {
    let message = match e.code() {
        Some(code) => format!("{context} (SQLSTATE {})", code.code()),
        None if e.is_closed() => format!("{context} (the connection was closed)"),
        None => context.to_owned(),
    };
    Error::store(message, e)
}

/// An `Error::Store` for a `COMMIT` that failed: if the connection broke, the transaction
/// may or may not have been applied.
pub(crate) fn commit_failed(context: &str, e: tokio_postgres::Error) -> Error {
    if e.code().is_none() {
        Error::store(
            format!(
                "{context}: the connection failed during COMMIT, outcome unknown (read the run again)"
            ),
            e,
        )
    } else {
        db(context, e)
    }
}

/// True for a unique-constraint violation (another writer got there first).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// An `Error::Store` for a failure to get a pooled connection.
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> Error {
    Error::store("getting a database connection", e)
}

/// An `Error::Store` for a failed filesystem call on the blob directory.
pub(crate) fn io(context: &str, e: std::io::Error) -> Error {
    Error::store(context, e)
}

/// An `Error::Store` for a failed blocking task.
pub(crate) fn task(context: &str, e: tokio::task::JoinError) -> Error {
    Error::store(format!("{context}: the task failed"), e)
}

/// Serializes a value for a JSON text column.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> crownest_core::Result<String> {
    serde_json::to_string(v).map_err(|e| Error::store(format!("serializing {what}"), e))
}

/// Parses a JSON text column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> crownest_core::Result<T> {
    serde_json::from_str(s).map_err(|e| Error::store(format!("stored {what} does not parse"), e))
}
