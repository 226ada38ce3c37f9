//! [`SqliteConfig`]: connection, group-commit and garbage-collection knobs.

use std::time::Duration;

/// How a [`crate::SqliteStore`] is opened and how it batches writes.
///
/// `SqliteConfig::new()` (= `Default`) gives:
///
/// | knob | default | meaning |
/// |---|---|---|
/// | `busy_timeout` | 10 s | how long a write waits for another process holding the SQLite write lock before failing with `Error::Store` (nothing written, the store is not poisoned) |
/// | `read_connections` | 4 | read connections kept open for reuse (more are opened on demand and closed after use) |
/// | `max_read_connections` | none | read connections open at once: a read finding them all busy waits for one instead of opening another (a short-lived process sets 1: each connection costs an open and a parse of the schema) |
/// | `inline_reads` | false | a read that finds a connection idle runs on the calling thread (an async task's worker) instead of the blocking pool: no hand-off between threads, but the caller's thread is busy for the read's duration (a short-lived process whose reads are small sets it) |
/// | `max_batch_delay` | 20 ms | a group-commit transaction stops taking queued writes this long after it took its first one |
/// | `max_batch_bytes` | 256 KiB | ... or once it holds this much event payload |
/// | `batch_linger` | 0 | how long the writer waits on an empty queue for one more write before committing (0: commit as soon as the queue is empty; writes that arrive during the previous fsync are grouped anyway) |
/// | `blob_grace` | 1 h | `gc` never deletes a blob stored (or stored again) more recently than this, so an upload has time to be attached to its run |
/// | `transfer_ttl` | 24 h | `gc` deletes staged transfers with no chunk received for this long |
/// | `temp_ttl` | 1 h | `gc` deletes files left in `<dir>/tmp` (crashed uploads) older than this |
/// | `sync_every_commit` | false | fsync the WAL at every write transaction, not only at those that must be power-loss durable (terminal commits, deletions; see the crate docs, "Durability") |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// SQLite busy timeout for every connection.
    pub busy_timeout: Duration,
    /// Read connections kept for reuse.
    pub read_connections: usize,
    /// Read connections open at once (`None`: no limit; `Some(0)` counts as 1).
    pub max_read_connections: Option<usize>,
    /// Reads run on the calling thread when a connection is idle.
    pub inline_reads: bool,
    /// Maximum age of a group-commit batch (from its first write).
    pub max_batch_delay: Duration,
    /// Maximum event payload of a group-commit batch.
    pub max_batch_bytes: usize,
    /// Wait on an empty queue before committing a batch.
    pub batch_linger: Duration,
    /// Minimum age of an unreferenced blob before `gc` deletes it.
    pub blob_grace: Duration,
    /// Idle time after which `gc` deletes a staged transfer.
    pub transfer_ttl: Duration,
    /// Age after which `gc` deletes a stray temporary file.
    pub temp_ttl: Duration,
    /// Fsync every write transaction (`synchronous=FULL` throughout), not only the ones
    /// that must survive a power loss on their own.
    pub sync_every_commit: bool,
}

impl SqliteConfig {
    /// The defaults listed above.
    pub fn new() -> Self {
        // The ages are core's defaults, so `gc()` and the engine's pass agree.
        let gc = crownest_core::gc::GcPolicy::default();
        Self {
            busy_timeout: Duration::from_secs(10),
            read_connections: 4,
            max_read_connections: None,
            inline_reads: false,
            max_batch_delay: Duration::from_millis(20),
            max_batch_bytes: 256 * 1024,
            batch_linger: Duration::ZERO,
            blob_grace: gc.blob_grace,
            transfer_ttl: gc.transfer_ttl,
            temp_ttl: gc.temp_ttl,
            sync_every_commit: false,
        }
    }

    /// Sets `busy_timeout`.
    pub fn with_busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Sets `read_connections` (at least 1 is kept).
    pub fn with_read_connections(mut self, n: usize) -> Self {
        self.read_connections = n.max(1);
        self
    }

    /// Caps the read connections open at once (at least 1). Reads beyond the cap wait for
    /// a connection to be free: they never wait for the writer, only for each other.
    pub fn with_max_read_connections(mut self, n: usize) -> Self {
        self.max_read_connections = Some(n.max(1));
        self
    }

    /// Sets `inline_reads`: a read that finds a connection idle runs on the thread that
    /// asks (for an async caller, the runtime's worker, which is busy meanwhile) instead of
    /// on the blocking pool, saving two hand-offs between threads per read; a read that
    /// finds none idle still goes to the pool. For processes whose reads are small and
    /// few at a time (the CLI); a server keeps the default.
    pub fn with_inline_reads(mut self, on: bool) -> Self {
        self.inline_reads = on;
        self
    }

    /// Sets `max_batch_delay`.
    pub fn with_max_batch_delay(mut self, d: Duration) -> Self {
        self.max_batch_delay = d;
        self
    }

    /// Sets `max_batch_bytes`.
    pub fn with_max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n;
        self
    }

    /// Sets `batch_linger`.
    pub fn with_batch_linger(mut self, d: Duration) -> Self {
        self.batch_linger = d;
        self
    }

    /// Sets `blob_grace`.
    pub fn with_blob_grace(mut self, d: Duration) -> Self {
        self.blob_grace = d;
        self
    }

    /// Sets `transfer_ttl`.
    pub fn with_transfer_ttl(mut self, d: Duration) -> Self {
        self.transfer_ttl = d;
        self
    }

    /// Sets `sync_every_commit`.
    pub fn with_sync_every_commit(mut self, on: bool) -> Self {
        self.sync_every_commit = on;
        self
    }

    /// Sets `temp_ttl`.
    pub fn with_temp_ttl(mut self, d: Duration) -> Self {
        self.temp_ttl = d;
        self
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self::new()
    }
}
