//! The checkpointer thread: copies the WAL into the database file off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses the threshold, so
//! one unlucky commit would wait for tens of MiB to be copied and fsynced. Instead the
//! writer tells this thread (its own connection) each time `checkpoint_bytes` of events were
//! committed, and it runs a `PASSIVE` checkpoint, which never blocks the writer or readers.
//! The writer keeps SQLite's own autocheckpoint as a backstop at a much larger WAL size.

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Duration;

use crownest_core::Result;
use rusqlite::Connection;

use crate::error::io;
use crate::schema::connect;

/// Payload committed between two checkpoints.
pub(crate) const CHECKPOINT_BYTES: usize = 32 * 1024 * 1024;

/// Handle of the checkpointer thread (it stops when the handle is dropped).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    tx: Sender<()>,
}

impl Checkpointer {
    pub(crate) fn start(db: &Path, busy_timeout: Duration) -> Result<Self> {
        let conn = connect(db, busy_timeout, false)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("crownest-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &rx))
            .map_err(|e| io("starting the checkpoint thread", e))?;
        Ok(Self { tx })
    }

    /// Asks for a checkpoint (coalesced with pending requests).
    pub(crate) fn request(&self) {
        let _ = self.tx.send(());
    }
}

fn run(conn: &Connection, rx: &Receiver<()>) {
    while rx.recv().is_ok() {
        loop {
            match rx.try_recv() {
                Ok(()) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        // Best effort: a failed or partial checkpoint leaves the WAL longer, never wrong
        // (every committed frame stays in the WAL until a checkpoint copied it).
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}
