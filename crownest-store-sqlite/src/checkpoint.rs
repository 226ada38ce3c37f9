//! The checkpointer thread: copies the WAL into the database file off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses the threshold, so
//! one unlucky commit would wait for tens of MiB to be copied and fsynced. Instead the
//! writer connection's WAL hook (which replaces the automatic checkpoint) asks this thread,
//! with its own connection, for a `PASSIVE` checkpoint whenever the WAL holds more than
//! [`CHECKPOINT_WAL_BYTES`]; a passive checkpoint never blocks the writer or readers. Should
//! those checkpoints never catch up with a steady stream of commits (the WAL can restart from
//! its beginning only once all of it was copied), the writer checkpoints inline at
//! `BACKSTOP_FACTOR` times that size, which bounds the WAL.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::Connection;

use crate::schema::connect;

/// WAL size above which a checkpoint is asked for.
pub(crate) const CHECKPOINT_WAL_BYTES: u64 = 32 * 1024 * 1024;

/// A WAL this many times [`CHECKPOINT_WAL_BYTES`] is checkpointed by the writer itself.
const BACKSTOP_FACTOR: i64 = 4;

/// Handle of the checkpointer thread (it stops when every handle is dropped).
#[derive(Debug, Clone)]
pub(crate) struct Checkpointer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: PathBuf,
    busy_timeout: Duration,
    /// The thread's queue, made at the first request (`None`: the thread could not be
    /// started; the writer's inline backstop still bounds the WAL).
    tx: OnceLock<Option<Sender<()>>>,
}

impl Checkpointer {
    /// A checkpointer whose thread starts at the first request, and whose connection is
    /// opened then: most processes (a CLI command) never write 32 MiB of WAL, and a thread
    /// costs its creation and a connection an open, the pragmas and a read of the schema.
    pub(crate) fn new(db: &Path, busy_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                db: db.to_owned(),
                busy_timeout,
                tx: OnceLock::new(),
            }),
        }
    }

    /// Asks for a checkpoint (coalesced with pending requests), starting the thread at
    /// the first request.
    pub(crate) fn request(&self) {
        let tx = self.inner.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (db, busy_timeout) = (self.inner.db.clone(), self.inner.busy_timeout);
            match std::thread::Builder::new()
                .name("crownest-sqlite-checkpoint".into())
                .spawn(move || run(&db, busy_timeout, &rx))
            {
                Ok(_) => Some(tx),
                // No thread (the process is out of them): the writer's inline checkpoint
                // at the backstop size still bounds the WAL.
                Err(_) => None,
            }
        });
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }

    /// Installs the WAL hook on the writer connection: after each commit, a WAL longer than
    /// [`CHECKPOINT_WAL_BYTES`] asks this thread for a checkpoint. The hook always reports
    /// success: the commit has happened by then, and an error would make it look failed.
    pub(crate) fn hook(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let page_size = u64::try_from(page_size).unwrap_or(4096).max(512);
        let threshold = i64::try_from(CHECKPOINT_WAL_BYTES / page_size).unwrap_or(i64::MAX);
        let me = self.clone();
        conn.wal_hook(Some(
            move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
                let frames = i64::from(frames);
                if frames >= BACKSTOP_FACTOR * threshold {
                    // The background checkpoints never caught up with a steady stream of
                    // commits, so the WAL never restarted: checkpoint here, with no commit
                    // racing it, so the next transaction writes the WAL from its start again.
                    // Best effort (a reader on an old snapshot can hold it back).
                    let _ = wal.checkpoint();
                } else if frames >= threshold {
                    // Asked after every commit while the WAL is long: a passive checkpoint
                    // copies only what was committed before it started; requests queued
                    // meanwhile coalesce into one.
                    me.request();
                }
                Ok(())
            },
        ))
    }
}

fn run(db: &Path, busy_timeout: Duration, rx: &Receiver<()>) {
    let mut conn: Option<Connection> = None;
    while rx.recv().is_ok() {
        loop {
            match rx.try_recv() {
                Ok(()) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        // Best effort: a failed or partial checkpoint leaves the WAL longer, never wrong
        // (every committed frame stays in the WAL until a checkpoint copied it); a failed
        // open is retried at the next request.
        if conn.is_none() {
            conn = connect(db, busy_timeout).ok();
        }
        if let Some(c) = &conn {
            let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}
