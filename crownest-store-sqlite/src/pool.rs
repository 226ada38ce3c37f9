//! Read connections: a small pool used from `spawn_blocking`, so reads never block the
//! async runtime and never wait for the writer (WAL readers see the last committed state).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crownest_core::{Error, Result};
use rusqlite::Connection;

use crate::error::OpError;
use crate::schema::connect;

/// Idle read connections, opened on demand.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    keep: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, busy_timeout: Duration, keep: usize) -> Self {
        Self {
            path,
            busy_timeout,
            keep: keep.max(1),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a read connection on a blocking thread.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> std::result::Result<T, OpError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.read_blocking(f))
            .await
            .map_err(|e| Error::store("a read task failed", e))?
    }

    /// Runs `f` with a read connection on the current thread.
    pub(crate) fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> std::result::Result<T, OpError>,
    {
        let pooled = self.idle().pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, self.busy_timeout, true)?,
        };
        let result = f(&conn).map_err(Error::from);
        if conn.is_autocommit() {
            let mut idle = self.idle();
            if idle.len() < self.keep {
                idle.push(conn);
            }
        }
        result
    }
}
