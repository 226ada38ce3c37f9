//! # crownest-store-sqlite
//!
//! [`SqliteStore`]: the durable, embedded default [`Store`] of CrowNest. Runs, events,
//! evidence, artifacts and transfer metadata live in one SQLite database
//! (`<dir>/crownest.db`, WAL mode); archive and artifact bytes live in a content-addressed
//! directory (`<dir>/blobs/ab/cdef...`), staged-transfer chunks in `<dir>/transfers/<id>/`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> crownest_core::Result<()> {
//! use crownest_core::event::{EventKind, NewEvent, OutputChunk};
//! use crownest_core::run::RunOwner;
//! use crownest_core::store::{RunCommit, Store};
//! use crownest_core::{Limits, RunId, RunRecord, RunSpec};
//! use crownest_store_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir().map_err(|e| crownest_core::Error::io("tempdir", e))?;
//! let store = SqliteStore::open(dir.path()).await?;
//! let run = RunRecord::new(
//!     RunId::new(),
//!     RunSpec::new(["echo", "hi"]),
//!     "process".into(),
//!     Limits::default(),
//!     RunOwner::current("docs"),
//! );
//! let id = store.create_run(run).await?.into_run().id;
//! let stdout = NewEvent::now(EventKind::Stdout(OutputChunk {
//!     offset: 0,
//!     data: Some("hi\n".into()),
//!     data_base64: None,
//! }));
//! let sealed = store
//!     .commit(&id, RunCommit { expected_next_seq: 1, events: vec![stdout], record: None, evidence: None, envelope: None })
//!     .await?;
//! // `commit` returned: the event is fsynced, and every reader (any process) sees it.
//! assert_eq!(store.list_events(&id, 0, 100).await?, sealed);
//! # Ok(())
//! # }
//! ```
//!
//! ## What it does
//!
//! | concern | how |
//! |---|---|
//! | database | SQLite (bundled), `journal_mode=WAL` (the WAL file kept between opens), `synchronous=FULL` for terminal commits and deletions and `NORMAL` for the rest (below), `foreign_keys=ON`, `busy_timeout`, `temp_store=MEMORY` (statement journals and sorts stay in memory: they were a temp file created, written and closed several times per tiny run) |
//! | schema | versioned by `PRAGMA user_version`, migrated step by step on open; a newer database is refused |
//! | `commit` | ONE `BEGIN IMMEDIATE` transaction: read the run row, `crownest_core::store::prepare_commit` (the checks, `seal_all` from the stored chain head, the evidence check, the new record), insert events, update the run, its artifacts and its evidence |
//! | writes | one writer thread owning the write connection; **group commit** of queued writes, each under its own `SAVEPOINT` (one refused commit never fails the others) |
//! | checkpoints | a background thread with its own connection (both started at the first checkpoint asked for) runs a `PASSIVE` WAL checkpoint whenever the WAL passes 32 MiB (asked by the writer's WAL hook, which replaces SQLite's inline autocheckpoint), so no commit waits for a checkpoint; none when the last connection closes (it cost every CLI command two fsyncs at exit); [`SqliteStore::close`] checkpoints and truncates a WAL over 1 MiB, because the next process to open the store reads all of the WAL back (~14 ms for 20 MB) |
//! | reads | a small pool of read connections on `spawn_blocking`: the async API never blocks the runtime, and reads never wait for writes; [`SqliteConfig::max_read_connections`] caps how many are open at once (the CLI: one), and a read connection sets only what a reader needs (below, "Short-lived processes") |
//! | blobs | streamed to `<dir>/tmp` while hashed (sha256) and counted; size, digest and `max_bytes` enforced (`ArchiveRejected`, nothing kept); fsync file → rename → fsync dir, file before row; same bytes stored once (an upload of at most 256 KiB is hashed in memory first, and no file is made when its bytes are stored already: a re-run of the same small archive; so a stalled small upload holds memory, not a temp file for gc) |
//! | transfers | chunk files written to temp, fsynced, renamed to `<dir>/transfers/<id>/<index>`; `open_transfer` chains them in order |
//! | failures | an I/O or SQLite failure while writing **poisons** the store: later writes fail with `Error::Store` ("store poisoned", the first failure as its source), never retried silently |
//! | gc | [`SqliteStore::gc`] (also `Store::collect_garbage`): unreferenced blobs, abandoned transfers, stale temp files; `Store::discard_blob` deletes a refused archive's blob at once unless a run names it |
//!
//! ## Durability: what is on disk when a call returns
//!
//! Two levels, chosen per write transaction (a group-commit batch takes the stronger level
//! of its writes; [`SqliteConfig::sync_every_commit`] makes every one `FULL`):
//!
//! * **`FULL`** (the WAL is fsynced before the call returns): a `commit` that ends the run
//!   (its `terminal` event, record and Evidence Bundle), and every write that deletes files
//!   after its commit (`delete_run`, `discard_blob`, `gc`, transfer writes). A crash or power
//!   loss after the call returned loses nothing of it, **nor of anything committed before
//!   it**: the WAL is one append-only log, so its fsync covers every earlier transaction.
//! * **`NORMAL`** (committed to the WAL, no fsync): `create_run`, the commits before the
//!   terminal one (status changes, output, progress), `request_cancel`, and recording a
//!   blob whose bytes are already fsynced. The call returns once the transaction is in
//!   the WAL: visible to every reader, in this process or another, and kept through a crash
//!   or kill of any process (the bytes are in the kernel's page cache). Only an OS crash or
//!   power loss before the next fsync (the next `FULL` commit, or a checkpoint, which
//!   fsyncs the WAL first) can lose them, and then it loses **a suffix**: SQLite replays
//!   the WAL up to the first transaction that did not reach the disk and drops that one and
//!   every later one. It never loses a transaction while keeping a later one, and it never
//!   loses a terminal commit.
//!
//! Why that is enough for a run (the argument is also in `docs/engine.md`, "Durability"):
//! whatever is lost is a tail of a run's events that the run would lose anyway if the host
//! went down a moment earlier, and the same recovery handles both. After the reboot the run
//! is not terminal, its owner process is gone, so recovery ends it `failed` /
//! `host_restarted` with evidence derived from the chain that is stored: the record claims
//! nothing that is not in its chain, and the chain still verifies. A lost `create_run`
//! leaves no run at all (its spec event is in the same suffix). A blob row that is lost
//! leaves an unnamed file (the bytes were fsynced and renamed first), which `gc` removes; a
//! row is never kept while the file it names is lost. What such a loss can do that an
//! fsync per commit could not: a reader (SSE, `crownest events --follow`) may have seen
//! events of that lost tail, and after recovery the same seqs hold other events (the new
//! `terminal`); their hashes differ, so the chain a client kept shows the fork.
//!
//! * `put_blob`: the blob file is fsynced, renamed into place and its directory fsynced,
//!   then its row committed. So a row never names a missing file; a file whose row never
//!   committed is removed by `gc`. Bytes stored already (the same archive again) are not
//!   fsynced a second time: that copy is dropped.
//! * `put_chunk`: the same for the chunk file and its row.
//! * Nothing is acknowledged early: with group commit a write waits for the transaction it
//!   joined, which costs at most one batch of latency and saves one fsync per write.
//!
//! ## Several processes on one store
//!
//! Several processes may open the same directory at once (the CLI runs `crownest run` in one
//! terminal and `crownest events --follow` or `crownest cancel` in another). SQLite's locks
//! serialize the writers (each write transaction is `BEGIN IMMEDIATE`; a writer waits up to
//! `busy_timeout` for another process's transaction, then fails with `Error::Store` without
//! writing and without poisoning); readers are never blocked. Blob installs, transfer
//! deletes and `gc` move files only while holding the SQLite write lock, so processes never
//! race on the blob directory. `commit` reads `next_seq` and the chain head inside its
//! transaction: two processes appending to one run get `Error::Conflict`, never a fork of the
//! chain. The directory must be on a local filesystem (WAL needs shared memory).
//!
//! ## Group-commit knobs ([`SqliteConfig`])
//!
//! | knob | default | effect |
//! |---|---|---|
//! | `max_batch_delay` | 20 ms | a batch stops taking queued writes this long after its first |
//! | `max_batch_bytes` | 256 KiB | ... or once it holds this much event payload |
//! | `batch_linger` | 0 | wait on an empty queue for one more write (0: commit at once; writes queued during the previous fsync still share the next one) |
//!
//! A single commit larger than `max_batch_bytes` is a batch of its own; it is never split.
//! [`SqliteStore::write_stats`] tells how many transactions the writes took.
//!
//! ## Short-lived processes
//!
//! A CLI command opens the store, does a few reads and writes, and exits: what the store
//! costs it at open matters as much as what a write costs (`docs/benchmarks.md`, "The
//! tiny-run floor"). Every connection costs an open, its pragmas and, at its first
//! statement, a parse of the whole schema; and the first connection of a process rebuilds
//! SQLite's WAL index by reading every frame of the WAL back (no other process holds it).
//!
//! * **Read connections are capped** ([`SqliteConfig::with_max_read_connections`]; the CLI
//!   sets 1 for every command but `serve`): a read that finds the allowed connections busy
//!   waits for one instead of opening another. A tiny `crownest run` opened three or four
//!   connections to `crownest.db` (the writer and two or three readers, as reads overlap)
//!   and now opens two. Reads still never wait for the writer. Serving reads on the
//!   writer's own connection (one connection in all) was not done: a read would then wait
//!   behind a commit's fsync, and a commit behind a read.
//! * **A read connection sets only what a reader needs**: `busy_timeout`, `temp_store`,
//!   `query_only`, no checkpoint and no removal of the WAL when it is the last to close. The
//!   page size and WAL mode are stored in the database (the writer's open, always first,
//!   sets them); `synchronous`, `foreign_keys`, `journal_size_limit` and
//!   `wal_autocheckpoint` are per connection but act only on writes, commits and
//!   checkpoints.
//! * **The close-time checkpoint is at 1 MiB of WAL**: each open reads the whole WAL back
//!   (SQLite rebuilds its index whenever no other connection is open: ~2.3 ms for 4 MiB
//!   here), and a tiny run appends ~170 KiB to it, so the threshold trades that read at
//!   every command against the checkpoint's fsyncs every few commands. On the first,
//!   busy-disk machine 4 MiB won (1 MiB: no gain measured; 512 KiB and 256 KiB: 3–7 ms
//!   slower per tiny run on average); on the 2026-12 machine 1 MiB is 0.2–0.45 ms faster
//!   per tiny run than 4 MiB with the home on disk and on tmpfs alike (interleaved A/B, 40
//!   rounds, twice each); below 1 MiB was not measured again.
//!
//! ## Throughput
//!
//! `examples/append_throughput.rs` appends 256 MiB of 64 KiB `stdout` events through
//! `commit`, every commit acknowledged only once fsynced. Measured on this project's 2-core
//! machine in release mode, while other builds were running (the disk managed only
//! 9–19 MB/s of 64 KiB appends with an fdatasync each):
//!
//! | shape | MB/s persisted |
//! |---|---|
//! | as the engine feeds it (the driver commits whatever output is queued: 16 chunks per commit) | 125–175 |
//! | one 64 KiB chunk per commit, one run | 36–48 |
//! | one chunk per commit, 4 runs at once (group commit: 3–4 commits per transaction) | 53–132 |
//!
//! These were measured with an fsync per commit (before output commits were made
//! `NORMAL`); one chunk per commit was bound by one WAL fsync per commit. The engine's
//! coalescing of queued output is what makes fast output cheap either way.
//!
//! ## Not done here
//!
//! Runs are never deleted (the store has no API for it), so a run's events, evidence and
//! blobs stay until the directory is removed.

mod blobs;
mod checkpoint;
mod config;
mod error;
mod gc;
mod layout;
mod pool;
mod runs;
#[doc(hidden)]
pub mod schema;
mod store;
mod transfers;
mod usage;
mod writer;

pub use config::SqliteConfig;
#[doc(hidden)]
pub use error::Fault;
pub use gc::{GcPolicy, StoreGcReport};
pub use store::SqliteStore;
pub use writer::WriteStats;

pub use crownest_core::store::Store;
