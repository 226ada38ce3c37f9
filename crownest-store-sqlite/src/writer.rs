//! The writer thread: the one connection that writes, fed by a channel, with group commit.
//!
//! Every write of the store (create, commit, cancel, blob and chunk installs, transfer
//! deletes, gc) is an [`Op`] sent to this thread. The thread takes the first queued op,
//! then keeps taking queued ops until the batch is `max_batch_delay` old, holds
//! `max_batch_bytes` of event payload, or the queue is empty (after waiting `batch_linger`),
//! and runs them in ONE `BEGIN IMMEDIATE` transaction, each op under its own `SAVEPOINT`:
//!
//! * an op that fails *logically* (a conflict, an unknown id) is rolled back to its
//!   savepoint and answered with its error; the others go on;
//! * an op that fails with an I/O or SQLite error rolls back the whole transaction, and
//!   every op of the batch fails: the store is poisoned ([`crate::error::Poison`]).
//!
//! Replies are sent only after `COMMIT` returned. Each op is [`Sync::Full`] or
//! [`Sync::Normal`]; a batch holding a `Full` op (or any batch, with
//! `SqliteConfig::sync_every_commit`) commits with `synchronous=FULL`: the WAL is fsynced
//! before the reply, and with it every transaction before it. A batch of `Normal` ops only
//! commits with `synchronous=NORMAL` (no fsync): it is visible to readers and survives a
//! crash of any process, and becomes power-loss durable with the next `Full` commit or
//! checkpoint (the crate docs, "Durability", say what that means for a run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crownest_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;
use crate::config::SqliteConfig;
use crate::error::{Cause, Fault, Faults, OpError, Poison, db, io, is_busy};
use crate::layout::{Layout, Trashed};

/// State shared by the store handle and its writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) layout: Layout,
    pub(crate) poison: Poison,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
}

/// Counters of committed write transactions.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    transactions: AtomicU64,
    writes: AtomicU64,
    synced: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> WriteStats {
        WriteStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            synced_transactions: self.synced.load(Ordering::Relaxed),
        }
    }
}

/// How well group commit is grouping: writes acknowledged vs transactions committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Write transactions committed by this store instance.
    pub transactions: u64,
    /// Writes (commits, creates, blob installs, ...) committed in them.
    pub writes: u64,
    /// Of `transactions`, those committed with `synchronous=FULL` (the WAL fsynced before
    /// the reply): terminal commits, deletions, or all with `sync_every_commit`.
    pub synced_transactions: u64,
}

/// What an op can do besides SQL: move files out of the way until the commit.
pub(crate) struct OpCtx<'a> {
    pub(crate) shared: &'a Shared,
    trash: Vec<Trashed>,
}

impl OpCtx<'_> {
    /// Moves `path` to the trash; it is deleted after `COMMIT`, or put back on rollback.
    pub(crate) fn trash(&mut self, path: &std::path::Path) -> std::io::Result<bool> {
        match Trashed::take(&self.shared.layout, path)? {
            Some(t) => {
                self.trash.push(t);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// How durable an op must be when its reply is sent (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// The WAL is fsynced before the reply (`synchronous=FULL`).
    Full,
    /// Committed without an fsync (`synchronous=NORMAL`): durable against process
    /// crashes at once, against power loss with the next `Full` commit or checkpoint.
    /// Only for ops that move no file (nothing in the trash), so no file deletion ever
    /// depends on a commit that could be lost.
    Normal,
}

/// One write, type-erased for the queue.
trait WriteOp: Send {
    /// Event payload bytes this op carries (for `max_batch_bytes`).
    fn payload_bytes(&self) -> usize;
    /// Whether its transaction must be fsynced before the reply.
    fn sync(&self) -> Sync;
    /// Runs the op; `Ok(true)` keep, `Ok(false)` roll back to the savepoint (logical error
    /// recorded), `Err` fatal.
    fn apply(&mut self, conn: &Connection, ctx: &mut OpCtx<'_>)
    -> std::result::Result<bool, Error>;
    /// Answers the caller once the transaction's fate is known.
    fn complete(self: Box<Self>, failure: Option<&BatchFailure>);
}

struct Op<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    bytes: usize,
    sync: Sync,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &mut OpCtx<'_>) -> std::result::Result<T, OpError> + Send,
{
    fn payload_bytes(&self) -> usize {
        self.bytes
    }

    fn sync(&self) -> Sync {
        self.sync
    }

    fn apply(
        &mut self,
        conn: &Connection,
        ctx: &mut OpCtx<'_>,
    ) -> std::result::Result<bool, Error> {
        let Some(work) = self.work.take() else {
            return Ok(false);
        };
        match work(conn, ctx) {
            Ok(v) => {
                self.result = Some(Ok(v));
                Ok(true)
            }
            Err(OpError::Logical(e)) => {
                self.result = Some(Err(e));
                Ok(false)
            }
            Err(OpError::Fatal(e)) => Err(e),
        }
    }

    fn complete(self: Box<Self>, failure: Option<&BatchFailure>) {
        let result = match (failure, self.result) {
            // A logical error wrote nothing either way: report it as it is.
            (_, Some(Err(e))) => Err(e),
            (Some(failure), _) => Err(failure.to_error()),
            (None, Some(ok)) => ok,
            (None, None) => Err(Error::Store {
                message: "write was not applied".into(),
                source: None,
            }),
        };
        let _ = self.reply.send(result);
    }
}

enum Msg {
    Op(Box<dyn WriteOp>),
    Close(oneshot::Sender<()>),
}

/// The sending side, held by the store.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Op(_) => "Op",
            Self::Close(_) => "Close",
        })
    }
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn start(
        conn: Connection,
        shared: Arc<Shared>,
        config: &SqliteConfig,
    ) -> Result<Self> {
        let mut conn = conn;
        let checkpointer = Checkpointer::new(&shared.layout.db, config.busy_timeout);
        // The hook keeps its own handle: the checkpoint thread lives as long as the connection.
        checkpointer
            .hook(&mut conn)
            .map_err(|e| db("installing the WAL hook", e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let knobs = Knobs {
            max_delay: config.max_batch_delay,
            max_bytes: config.max_batch_bytes,
            linger: config.batch_linger,
            sync_every_commit: config.sync_every_commit,
            busy_timeout: config.busy_timeout,
            wal: shared.layout.wal_path(),
        };
        std::thread::Builder::new()
            .name("crownest-sqlite-writer".into())
            .spawn(move || run(conn, &rx, &thread_shared, knobs))
            .map_err(|e| io("starting the writer thread", e))?;
        Ok(Self { tx, shared })
    }

    /// Queues a write and waits for its transaction to commit, fsynced ([`Sync::Full`]).
    pub(crate) async fn submit<T, F>(&self, payload_bytes: usize, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut OpCtx<'_>) -> std::result::Result<T, OpError> + Send + 'static,
    {
        self.submit_with(Sync::Full, payload_bytes, work).await
    }

    /// Queues a write and waits for its transaction to commit as durably as `sync` says.
    pub(crate) async fn submit_with<T, F>(
        &self,
        sync: Sync,
        payload_bytes: usize,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut OpCtx<'_>) -> std::result::Result<T, OpError> + Send + 'static,
    {
        self.shared.poison.check()?;
        let (reply, rx) = oneshot::channel();
        let op = Op {
            work: Some(work),
            result: None,
            reply,
            bytes: payload_bytes,
            sync,
        };
        self.tx.send(Msg::Op(Box::new(op))).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Lets queued writes finish, checkpoints a long WAL (`checkpoint_on_close`), then
    /// stops the thread and closes the connection.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The message of an `Error::Store` (so re-wrapping it does not repeat "store failed").
/// Why a whole batch failed, given to each of its ops (an `Error` is not `Clone`): the
/// store error's own message and, as text, the chain of its cause.
struct BatchFailure {
    message: String,
    cause: Option<String>,
}

impl BatchFailure {
    fn of(e: &Error) -> Self {
        match e {
            Error::Store { message, source } => Self {
                message: message.clone(),
                cause: source.as_ref().map(|s| chain_of(s.as_ref())),
            },
            other => Self {
                message: other.chain(),
                cause: None,
            },
        }
    }

    fn message(message: String) -> Self {
        Self {
            message,
            cause: None,
        }
    }

    fn to_error(&self) -> Error {
        Error::Store {
            message: self.message.clone(),
            source: self
                .cause
                .clone()
                .map(|c| Box::new(Cause(c)) as crownest_core::error::BoxError),
        }
    }
}

/// `e`'s message and every source's, joined by `: `.
fn chain_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn closed() -> Error {
    Error::Store {
        message: "the store is closed".into(),
        source: None,
    }
}

#[derive(Clone)]
struct Knobs {
    max_delay: Duration,
    max_bytes: usize,
    linger: Duration,
    sync_every_commit: bool,
    busy_timeout: Duration,
    /// The WAL file (fsynced by hand in the one case SQLite would not: see `execute`).
    wal: std::path::PathBuf,
}

/// Most ops in one transaction, whatever their size.
const MAX_BATCH_OPS: usize = 1024;

fn run(mut conn: Connection, rx: &Receiver<Msg>, shared: &Shared, knobs: Knobs) {
    let mut close = None;
    // The connection starts with `synchronous=FULL` (`schema::connect`).
    let mut full = true;
    while close.is_none() {
        let first = match rx.recv() {
            Ok(Msg::Op(op)) => op,
            Ok(Msg::Close(tx)) => {
                close = Some(tx);
                break;
            }
            Err(_) => break,
        };
        let started = Instant::now();
        let mut bytes = first.payload_bytes();
        let mut batch = vec![first];
        while bytes < knobs.max_bytes && batch.len() < MAX_BATCH_OPS {
            let waited = started.elapsed();
            if waited >= knobs.max_delay {
                break;
            }
            let next = if knobs.linger.is_zero() {
                rx.try_recv()
                    .map_err(|e| matches!(e, TryRecvError::Disconnected))
            } else {
                rx.recv_timeout(knobs.linger.min(knobs.max_delay - waited))
                    .map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
            };
            match next {
                Ok(Msg::Op(op)) => {
                    bytes += op.payload_bytes();
                    batch.push(op);
                }
                Ok(Msg::Close(tx)) => {
                    close = Some(tx);
                    break;
                }
                Err(_) => break,
            }
        }
        let want_full = knobs.sync_every_commit || batch.iter().any(|op| op.sync() == Sync::Full);
        // SQLite refuses to change the safety level inside a transaction: set it before.
        if want_full != full {
            let pragma = if want_full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            match exec_cached(&conn, pragma) {
                Ok(()) => full = want_full,
                Err(e) => {
                    let err = shared.poison.poison(db("setting the sync level", e));
                    let failure = BatchFailure::of(&err);
                    batch.into_iter().for_each(|op| op.complete(Some(&failure)));
                    continue;
                }
            }
        }
        execute(&mut conn, batch, shared, full, &knobs.wal);
    }
    if close.is_some() {
        checkpoint_on_close(&conn, &knobs.wal, knobs.busy_timeout);
    }
    drop(conn);
    if let Some(tx) = close {
        let _ = tx.send(());
    }
}

/// A WAL longer than this is checkpointed (and truncated) by [`Writer::close`].
pub(crate) const CLOSE_CHECKPOINT_WAL_BYTES: u64 = 1024 * 1024;

/// How long the closing checkpoint waits for readers of other processes.
const CLOSE_CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// On [`Writer::close`]: copies the WAL into the database and truncates it when it holds
/// more than [`CLOSE_CHECKPOINT_WAL_BYTES`]. The next process to open the store rebuilds
/// its WAL index by reading every frame of the WAL (SQLite does that whenever no other
/// connection is open): with the WAL left to grow to the checkpointer's 32 MiB, every short
/// CLI command paid up to ~20 ms for it. Best effort: a checkpoint that cannot get past
/// another process's readers within [`CLOSE_CHECKPOINT_WAIT`] is left for later.
fn checkpoint_on_close(conn: &Connection, wal: &std::path::Path, busy_timeout: Duration) {
    if std::fs::metadata(wal).map_or(0, |m| m.len()) <= CLOSE_CHECKPOINT_WAL_BYTES {
        return;
    }
    if conn.busy_timeout(CLOSE_CHECKPOINT_WAIT).is_ok() {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.busy_timeout(busy_timeout);
    }
}

/// One statement of the writer's own (`BEGIN IMMEDIATE`, `SAVEPOINT op`, `COMMIT`, ...)
/// from the connection's statement cache: every write transaction runs four or more of
/// them, which `execute_batch` parsed anew each time.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn execute(
    conn: &mut Connection,
    mut batch: Vec<Box<dyn WriteOp>>,
    shared: &Shared,
    full: bool,
    wal: &std::path::Path,
) {
    let fail_all = |batch: Vec<Box<dyn WriteOp>>, failure: BatchFailure| {
        for op in batch {
            op.complete(Some(&failure));
        }
    };
    if let Err(e) = shared.poison.check() {
        return fail_all(batch, BatchFailure::of(&e));
    }
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        if is_busy(&e) {
            // Nothing was written: fail loudly, but the store's state is still known.
            let msg =
                format!("another process held the database write lock past busy_timeout: {e}");
            return fail_all(batch, BatchFailure::message(msg));
        }
        let err = shared.poison.poison(db("starting a write transaction", e));
        return fail_all(batch, BatchFailure::of(&err));
    }
    let mut trash = Vec::new();
    let mut fatal = None;
    for op in batch.iter_mut() {
        if let Err(e) = exec_cached(conn, "SAVEPOINT op") {
            fatal = Some(db("opening a savepoint", e));
            break;
        }
        let mut ctx = OpCtx {
            shared,
            trash: Vec::new(),
        };
        // A panicking op (a bug) must not take the writer thread, and with it every later
        // write, down silently: it fails its batch and poisons the store like any fatal error.
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.apply(conn, &mut ctx)))
                .unwrap_or_else(|_| {
                    Err(Error::Store {
                        message: "a write panicked".into(),
                        source: None,
                    })
                });
        match applied {
            Ok(true) => {
                trash.append(&mut ctx.trash);
                if let Err(e) = exec_cached(conn, "RELEASE op") {
                    fatal = Some(db("releasing a savepoint", e));
                    break;
                }
            }
            Ok(false) => {
                ctx.trash.into_iter().rev().for_each(Trashed::restore);
                if let Err(e) = conn.execute_batch("ROLLBACK TO op; RELEASE op") {
                    fatal = Some(db("rolling back a savepoint", e));
                    break;
                }
            }
            Err(e) => {
                ctx.trash.into_iter().rev().for_each(Trashed::restore);
                fatal = Some(e);
                break;
            }
        }
    }
    if fatal.is_none()
        && let Err(e) = shared.faults.trip(Fault::WriteTransaction)
    {
        fatal = Some(io("committing a write transaction", e));
    }
    if fatal.is_none()
        && let Err(e) = exec_cached(conn, "COMMIT")
    {
        fatal = Some(db("committing a write transaction", e));
    }
    // Files are deleted only after a durable commit (a lost commit must not leave a row
    // naming a deleted file). `Normal` ops move no file, so this is a backstop: were one to
    // move a file, the WAL is fsynced here as a `Full` commit would have.
    if fatal.is_none()
        && !full
        && !trash.is_empty()
        && let Err(e) = std::fs::File::open(wal).and_then(|f| f.sync_data())
    {
        fatal = Some(io("fsyncing the WAL before deleting files", e));
    }
    match fatal {
        None => {
            shared.stats.transactions.fetch_add(1, Ordering::Relaxed);
            if full {
                shared.stats.synced.fetch_add(1, Ordering::Relaxed);
            }
            shared
                .stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            trash.into_iter().for_each(Trashed::purge);
            for op in batch {
                op.complete(None);
            }
        }
        Some(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            trash.into_iter().rev().for_each(Trashed::restore);
            let err = shared.poison.poison(e);
            let failure = BatchFailure::of(&err);
            // Ops whose logical error was recorded keep it; the rest get the poison.
            for op in batch {
                op.complete(Some(&failure));
            }
        }
    }
}
