//! Read connections: a small pool used from `spawn_blocking`, so reads never block the
//! async runtime and never wait for the writer (WAL readers see the last committed state).
//!
//! Each connection costs its process an open, a few pragmas and a parse of the whole
//! schema at its first statement. A long-lived process (`serve`) keeps a few and opens more
//! when reads overlap; a short-lived one (a CLI command) caps them
//! ([`crate::SqliteConfig::max_read_connections`], 1 for the CLI): a read that finds every
//! allowed connection busy waits for one to be returned instead of opening another.
//!
//! With [`crate::SqliteConfig::with_inline_reads`] (the CLI) a read that finds a connection
//! idle runs on the thread that asks, an async worker included: a CLI command's reads are
//! small (a run record, a page of events), and the hand-off to a blocking thread and back
//! cost more than the read (about 0.5 ms of a tiny `crownest run`, `docs/benchmarks.md`).
//! A read that finds none idle still goes to the blocking pool, so it never waits for
//! another read on an async worker.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crownest_core::{Error, Result};
use rusqlite::Connection;

use crate::error::OpError;
use crate::schema::connect_reader;

/// Idle read connections, opened on demand.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    /// Idle connections kept for reuse.
    keep: usize,
    /// Connections open at once (idle or in use), at least 1.
    max: usize,
    /// A read that finds a connection idle runs on the calling thread.
    inline: bool,
    state: Mutex<State>,
    /// Signalled whenever a connection is returned or closed.
    returned: Condvar,
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<Connection>,
    /// Connections open: idle, in use, or being opened.
    open: usize,
    /// The store was closed: connections are closed when returned, not kept.
    closed: bool,
    /// A prewarm is opening a connection (`close_idle` waits for it).
    prewarming: bool,
}

/// A connection taken from the pool; dropping it returns it (or closes it), also when the
/// read panicked.
struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take();
        let mut state = self.pool.state();
        // A connection left inside a transaction (a read that failed or panicked midway)
        // is closed rather than reused.
        let close = match conn {
            Some(c) if c.is_autocommit() && !state.closed && state.idle.len() < self.pool.keep => {
                state.idle.push(c);
                None
            }
            other => {
                state.open -= 1;
                other
            }
        };
        drop(state);
        self.pool.returned.notify_one();
        drop(close);
    }
}

impl ReadPool {
    /// A pool keeping up to `keep` idle connections, with at most `max` open at once
    /// (`None`: no limit).
    pub(crate) fn new(
        path: PathBuf,
        busy_timeout: Duration,
        keep: usize,
        max: Option<usize>,
    ) -> Self {
        let max = max.unwrap_or(usize::MAX).max(1);
        Self {
            path,
            busy_timeout,
            keep: keep.clamp(1, max),
            max,
            inline: false,
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
        }
    }

    /// Reads that find a connection idle run on the calling thread
    /// ([`crate::SqliteConfig::with_inline_reads`]).
    pub(crate) fn with_inline(mut self, inline: bool) -> Self {
        self.inline = inline;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a read connection on a blocking thread, or, with `inline` and a
    /// connection idle, on this one.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> std::result::Result<T, OpError> + Send + 'static,
    {
        if self.inline
            && let Some(lease) = self.idle()
        {
            let conn = lease.conn.as_ref().expect("an idle connection");
            // A panic is the read's failure, as on the blocking pool; the lease, dropped
            // while unwinding, closes a connection left inside a transaction.
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .map_err(|_| Error::store("a read task failed", "the read panicked"))?
                .map_err(Error::from);
        }
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.read_blocking(f))
            .await
            .map_err(|e| Error::store("a read task failed", e))?
    }

    /// Runs `f` with a read connection on the current thread (waiting for one when `max`
    /// are in use).
    pub(crate) fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> std::result::Result<T, OpError>,
    {
        let mut lease = self.lease();
        if lease.conn.is_none() {
            // Opened outside the lock: other reads go on meanwhile. On failure the lease,
            // dropped empty, gives the slot back.
            lease.conn = Some(connect_reader(&self.path, self.busy_timeout)?);
        }
        let conn = lease.conn.as_ref().expect("a leased connection");
        f(conn).map_err(Error::from)
    }

    /// An idle connection, if there is one (never waits, never opens).
    fn idle(&self) -> Option<Lease<'_>> {
        let conn = self.state().idle.pop()?;
        Some(Lease {
            pool: self,
            conn: Some(conn),
        })
    }

    /// An idle connection, or a slot to open one in (`conn: None`).
    fn lease(&self) -> Lease<'_> {
        let mut state = self.state();
        loop {
            if let Some(c) = state.idle.pop() {
                return Lease {
                    pool: self,
                    conn: Some(c),
                };
            }
            if state.open < self.max {
                state.open += 1;
                return Lease {
                    pool: self,
                    conn: None,
                };
            }
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Opens one connection on another thread and leaves it idle for the first read,
    /// which otherwise pays for the open, the pragmas and the parse of the schema itself
    /// (about a millisecond; for a CLI command, on its critical path). A read that comes
    /// first waits for it (the slot is taken) unless the cap allows another; a failure
    /// gives the slot back, and the read then opens its own and reports the error.
    pub(crate) fn prewarm(self: &Arc<Self>) {
        {
            let mut state = self.state();
            if state.open >= self.max || !state.idle.is_empty() || state.closed {
                return;
            }
            state.open += 1;
            state.prewarming = true;
        }
        let pool = self.clone();
        let work = move || {
            let conn = connect_reader(&pool.path, pool.busy_timeout).and_then(|c| {
                // Any statement naming a table parses the schema.
                c.prepare("SELECT 1 FROM runs LIMIT 0")
                    .map_err(|e| crate::error::db("reading the schema", e))?;
                Ok(c)
            });
            // Idle when it opened and the store is open; else closed before the slot
            // is freed, so that `close_idle` returns with no connection left.
            let mut state = pool.state();
            match conn {
                Ok(c) if !state.closed => state.idle.push(c),
                other => {
                    drop(state);
                    drop(other);
                    state = pool.state();
                    state.open -= 1;
                }
            }
            state.prewarming = false;
            drop(state);
            pool.returned.notify_all();
        };
        // On the runtime's blocking pool when there is one: its threads stay for the next
        // task, where a thread of its own would end in the middle of the command (a thread
        // that ends unmaps its signal stack and returns its stack to the kernel, each a
        // flush of the other CPUs' TLBs by interrupt).
        let spawned = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                drop(rt.spawn_blocking(work));
                Ok(())
            }
            Err(_) => std::thread::Builder::new()
                .name("crownest-sqlite-prewarm".into())
                .spawn(work)
                .map(drop),
        };
        if spawned.is_err() {
            let mut state = self.state();
            state.open -= 1;
            state.prewarming = false;
            drop(state);
            self.returned.notify_all();
        }
    }

    /// Closes the idle connections; from now on every connection closes when its read ends
    /// (a prewarm still opening included). Reads still work, each opening its own.
    pub(crate) fn close_idle(&self) {
        let idle = {
            let mut state = self.state();
            state.closed = true;
            // A prewarm still opening closes its connection itself (bounded wait: an open
            // that hangs, e.g. on a stuck filesystem, is not waited for).
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while state.prewarming {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .returned
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        drop(idle);
        self.returned.notify_all();
    }

    /// Connections open now (idle or in use): tests.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        self.state().open
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::schema::{connect, migrate};

    /// A migrated database in a temp dir, with one row the writer committed.
    fn database() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crownest.db");
        let mut writer = connect(&path, Duration::from_secs(10)).unwrap();
        migrate(&mut writer).unwrap();
        writer
            .execute(
                "INSERT INTO blobs (sha256, size, stored_at) VALUES ('a', 1, 0)",
                [],
            )
            .unwrap();
        (dir, path, writer)
    }

    fn count_blobs(c: &Connection) -> std::result::Result<i64, OpError> {
        Ok(c.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap())
    }

    #[test]
    fn reads_beyond_the_cap_wait_for_the_connection_and_all_complete() {
        let (_dir, path, writer) = database();
        let pool = Arc::new(ReadPool::new(path, Duration::from_secs(10), 4, Some(1)));
        let active = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, active, most) = (pool.clone(), active.clone(), most.clone());
                std::thread::spawn(move || {
                    pool.read_blocking(|c| {
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Long enough for the other threads to arrive and wait.
                        std::thread::sleep(Duration::from_millis(5));
                        let n = count_blobs(c);
                        active.fetch_sub(1, Ordering::SeqCst);
                        n
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 1);
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(pool.open_connections(), 1);
        // The one reader sees what the writer commits next.
        writer
            .execute(
                "INSERT INTO blobs (sha256, size, stored_at) VALUES ('b', 1, 0)",
                [],
            )
            .unwrap();
        assert_eq!(pool.read_blocking(count_blobs).unwrap(), 2);
        assert_eq!(pool.open_connections(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_read_runs_on_the_calling_thread_only_with_a_connection_idle() {
        let (_dir, path, _writer) = database();
        let pool =
            Arc::new(ReadPool::new(path, Duration::from_secs(10), 1, Some(1)).with_inline(true));
        let here = || std::thread::current().id();
        // None idle yet: the first read goes to the blocking pool (and opens one).
        let (n, on) = pool
            .read(move |c| Ok((count_blobs(c)?, here())))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_ne!(on, here());
        // Idle now: this one runs here.
        let (n, on) = pool
            .read(move |c| Ok((count_blobs(c)?, here())))
            .await
            .unwrap();
        assert_eq!((n, on), (1, here()));
        assert_eq!(pool.open_connections(), 1);
        // A panic is the read's error, and the connection is still there for the next.
        let failed = pool
            .read(|_| -> std::result::Result<(), OpError> { panic!("a read") })
            .await;
        assert!(matches!(failed, Err(Error::Store { .. })), "{failed:?}");
        assert_eq!(pool.open_connections(), 1);
        let (n, on) = pool
            .read(move |c| Ok((count_blobs(c)?, here())))
            .await
            .unwrap();
        assert_eq!((n, on), (1, here()));
        // Without inline, reads never run here.
        let (_dir2, path2, _writer2) = database();
        let pooled = Arc::new(ReadPool::new(path2, Duration::from_secs(10), 1, Some(1)));
        for _ in 0..2 {
            let on = pooled.read(move |_| Ok(here())).await.unwrap();
            assert_ne!(on, here());
        }
    }

    #[test]
    fn a_read_that_panics_gives_its_connection_back() {
        let (_dir, path, _writer) = database();
        let pool = ReadPool::new(path, Duration::from_secs(10), 1, Some(1));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.read_blocking(|_| -> std::result::Result<(), OpError> { panic!("a read") })
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.read_blocking(count_blobs).unwrap(), 1);
    }

    #[test]
    fn a_connection_that_fails_to_open_gives_its_slot_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("crownest.db");
        let pool = ReadPool::new(path, Duration::from_secs(10), 1, Some(1));
        assert!(pool.read_blocking(count_blobs).is_err());
        assert_eq!(pool.open_connections(), 0);
        // Not stuck waiting for the slot the failed open took.
        assert!(pool.read_blocking(count_blobs).is_err());
    }

    #[test]
    fn a_reader_in_a_transaction_is_closed_not_reused() {
        let (_dir, path, _writer) = database();
        let pool = ReadPool::new(path, Duration::from_secs(10), 1, Some(1));
        pool.read_blocking(|c| {
            c.execute_batch("BEGIN").unwrap();
            count_blobs(c)
        })
        .unwrap();
        assert_eq!(pool.open_connections(), 0);
        assert_eq!(pool.read_blocking(count_blobs).unwrap(), 1);
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn a_prewarmed_connection_serves_the_first_read_and_close_leaves_none_open() {
        let (_dir, path, _writer) = database();
        let pool = Arc::new(ReadPool::new(path, Duration::from_secs(10), 1, Some(1)));
        pool.prewarm();
        // The first read waits for the prewarmed connection (the cap is 1) and uses it.
        assert_eq!(pool.read_blocking(count_blobs).unwrap(), 1);
        assert_eq!(pool.open_connections(), 1);
        pool.prewarm(); // one is idle already: nothing more opens
        assert_eq!(pool.open_connections(), 1);
        pool.close_idle();
        assert_eq!(pool.open_connections(), 0);
        // After the close a read still works, and keeps nothing; a prewarm opens nothing.
        assert_eq!(pool.read_blocking(count_blobs).unwrap(), 1);
        pool.prewarm();
        assert_eq!(pool.open_connections(), 0);
    }

    #[test]
    fn close_waits_for_a_prewarm_still_opening() {
        let (_dir, path, _writer) = database();
        let pool = Arc::new(ReadPool::new(path, Duration::from_secs(10), 1, Some(1)));
        pool.prewarm();
        pool.close_idle();
        assert_eq!(
            pool.open_connections(),
            0,
            "the prewarmed connection was closed"
        );
    }
}
