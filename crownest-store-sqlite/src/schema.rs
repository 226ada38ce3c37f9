//! The versioned schema: connection setup and migrations (`PRAGMA user_version`).
//!
//! Each [`Migration`] runs in its own `BEGIN IMMEDIATE` transaction that re-reads
//! `user_version` first, so two processes opening the same store at once migrate it once.
//! A database newer than this build knows is refused rather than misread.

use std::path::Path;
use std::time::Duration;

use crownest_core::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::db;

/// One schema step.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `user_version` after this step.
    pub version: u32,
    /// What it does.
    pub description: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every schema step, in order. Append only: a released step is never edited.
#[doc(hidden)]
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "runs, events, evidence, blobs, transfers and chunks",
        sql: "
CREATE TABLE runs (
    created          INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order
    id               TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL,
    idempotency_key  TEXT    UNIQUE,
    next_seq         INTEGER NOT NULL,
    chain_head       TEXT    NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    archive_sha256   TEXT,
    record           TEXT    NOT NULL                   -- RunRecord JSON
);
CREATE INDEX runs_by_status ON runs(status, id);
CREATE INDEX runs_by_archive ON runs(archive_sha256) WHERE archive_sha256 IS NOT NULL;

CREATE TABLE events (
    run_id TEXT    NOT NULL REFERENCES runs(id),
    seq    INTEGER NOT NULL,
    event  TEXT    NOT NULL,                            -- sealed Event JSON
    UNIQUE (run_id, seq)
);

CREATE TABLE evidence (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    bundle TEXT NOT NULL                                -- EvidenceBundle JSON
);

CREATE TABLE blobs (
    sha256    TEXT    PRIMARY KEY,
    size      INTEGER NOT NULL,
    stored_at INTEGER NOT NULL                          -- unix ms of the last put
);

CREATE TABLE transfers (
    transfer_id TEXT    PRIMARY KEY,
    run_id      TEXT    NOT NULL,
    record      TEXT    NOT NULL,                       -- TransferRecord JSON, `received` empty
    updated_at  INTEGER NOT NULL                        -- unix ms of the last chunk
);

CREATE TABLE chunks (
    transfer_id TEXT    NOT NULL REFERENCES transfers(transfer_id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;
",
    },
    Migration {
        version: 2,
        description: "artifacts table (get_artifact by id, gc by sha256), backfilled from run records",
        sql: "
CREATE TABLE artifacts (
    artifact_id TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs(id),
    sha256      TEXT NOT NULL,
    record      TEXT NOT NULL                           -- Artifact JSON
);
CREATE INDEX artifacts_by_run ON artifacts(run_id);
CREATE INDEX artifacts_by_sha256 ON artifacts(sha256);
INSERT OR IGNORE INTO artifacts (artifact_id, run_id, sha256, record)
    SELECT json_extract(a.value, '$.artifactId'), runs.id, json_extract(a.value, '$.sha256'), a.value
    FROM runs, json_each(runs.record, '$.artifacts') AS a
    ORDER BY runs.id;
",
    },
    Migration {
        version: 3,
        description: "evidence.envelope: the DSSE envelope signed in the terminal commit",
        sql: "
ALTER TABLE evidence ADD COLUMN envelope TEXT;                -- DsseEnvelope JSON, or NULL
",
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Opens a write connection (the writer's, the checkpointer's) with the store's pragmas.
pub(crate) fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = open(path, busy_timeout)?;
    // A new database gets SQLite's default 4 KiB pages. Every commit writes whole pages to
    // the WAL: with 16 KiB pages (stores made before 2026-12-06 keep them; a page size
    // cannot change in WAL mode) a tiny run appended ~640 KB, which the next command read
    // back at open, against ~175 KB now; large output events cost ~5-8 % more throughput
    // (more overflow pages), still well above 100 MB/s (docs/benchmarks.md).
    conn.execute_batch("PRAGMA page_size = 4096;")
        .map_err(|e| db("setting page_size", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| db("enabling WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Store {
            message: format!("the database refused WAL mode (journal_mode is {mode})"),
            source: None,
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| db("setting pragmas", e))?;
    // SQLite's own checkpoint (run by the committing connection, in the commit's time) only
    // past 64 MiB of WAL, whatever the page size: the checkpointer thread copies the WAL at
    // 32 MiB first (`checkpoint.rs`).
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| db("reading page_size", e))?;
    let pages = (64 * 1024 * 1024) / page_size.max(512);
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {pages};"))
        .map_err(|e| db("setting wal_autocheckpoint", e))?;
    Ok(conn)
}

/// Opens a read connection (`query_only`). Only the writer's open (always first: the pool
/// exists once it succeeded) sets up the database: `page_size` and `journal_mode = WAL` are
/// stored in the file, and `synchronous`, `foreign_keys`, `journal_size_limit` and
/// `wal_autocheckpoint` are per connection but act only on writes, commits and
/// checkpoints, which a `query_only` connection never makes. What a reader does need is set
/// here: `busy_timeout`, `temp_store` (its sorts), and no checkpoint and no deletion of the
/// WAL when it happens to be the process's last connection to close.
pub(crate) fn connect_reader(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = open(path, busy_timeout)?;
    conn.execute_batch(
        "PRAGMA temp_store = MEMORY;
         PRAGMA query_only = ON;",
    )
    .map_err(|e| db("setting pragmas", e))?;
    Ok(conn)
}

/// Statements kept prepared per connection (see [`open`]).
const STATEMENT_CACHE: usize = 64;

/// Opens `path` with what every connection needs: `busy_timeout`, the WAL kept when it
/// closes ([`persist_wal`]), and no checkpoint when it closes last.
fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| db("opening the database", e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| db("setting busy_timeout", e))?;
    // Every statement the store runs more than once is `prepare_cached`: about forty
    // distinct ones on the writer (runs, blobs, transfers, gc, its own BEGIN/SAVEPOINT/
    // COMMIT). rusqlite's default of 16 would evict and parse them again within one run.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    persist_wal(&conn)?;
    // No checkpoint when the last connection closes: that would cost every short-lived
    // process (a CLI command) a checkpoint with two fsyncs at exit, or none when it happened
    // not to close its connections. `Writer::close` checkpoints instead, when the WAL has
    // grown long enough to be worth it (`writer::CLOSE_CHECKPOINT_WAL_BYTES`).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| db("turning off the checkpoint on close", e))?;
    Ok(conn)
}

/// Keeps `crownest.db-wal` when the last connection closes (SQLite deletes it after a
/// checkpoint on close otherwise). Otherwise every short-lived process (each CLI command)
/// deletes the WAL on exit and creates it again on open: two changes to the store
/// directory, each a journal commit of the filesystem that a later fsync has to wait for.
fn persist_wal(conn: &Connection) -> Result<()> {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: `conn.handle()` is the open connection's `sqlite3*`, valid while `conn` lives;
    // SQLITE_FCNTL_PERSIST_WAL reads and writes exactly one `int` through the pointer.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(Error::Store {
            message: format!("keeping the WAL file (SQLITE_FCNTL_PERSIST_WAL) failed: code {rc}"),
            source: None,
        })
    }
}

/// The database's `user_version`.
pub(crate) fn user_version(conn: &Connection) -> Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| db("reading user_version", e))
}

/// Brings the schema to [`SCHEMA_VERSION`]. An up-to-date database (every open but the
/// first) is one read, without taking the write lock once per migration step.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32> {
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(SCHEMA_VERSION);
    }
    migrate_to(conn, SCHEMA_VERSION)
}

/// Applies the steps up to `target` (tests use it to make an old database).
#[doc(hidden)]
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<u32> {
    for step in MIGRATIONS.iter().filter(|m| m.version <= target) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db("starting a migration", e))?;
        let current = user_version(&tx)?;
        if current > SCHEMA_VERSION {
            return Err(Error::Store {
                message: format!(
                    "the database has schema version {current}, newer than this build's {SCHEMA_VERSION}"
                ),
                source: None,
            });
        }
        if current >= step.version {
            continue;
        }
        if current + 1 != step.version {
            return Err(Error::Store {
                message: format!("schema version {current} cannot take step {}", step.version),
                source: None,
            });
        }
        tx.execute_batch(step.sql).map_err(|e| {
            db(
                &format!("migration {} ({})", step.version, step.description),
                e,
            )
        })?;
        tx.pragma_update(None, "user_version", step.version)
            .map_err(|e| db("setting user_version", e))?;
        tx.commit().map_err(|e| db("committing a migration", e))?;
    }
    let v = user_version(conn)?;
    if v > SCHEMA_VERSION {
        return Err(Error::Store {
            message: format!(
                "the database has schema version {v}, newer than this build's {SCHEMA_VERSION}"
            ),
            source: None,
        });
    }
    Ok(v)
}

/// Opens `path` and applies the steps up to `target` (tests: an old-version database).
#[doc(hidden)]
pub fn create_at_version(path: &Path, target: u32) -> Result<Connection> {
    let mut conn = connect(path, Duration::from_secs(10))?;
    migrate_to(&mut conn, target)?;
    Ok(conn)
}
