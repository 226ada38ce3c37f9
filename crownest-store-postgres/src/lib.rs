//! # crownest-store-postgres
//!
//! [`PostgresStore`]: the CrowNest [`Store`] on a **PostgreSQL** server, for several engine
//! processes (on one host or many) sharing one durable record. Runs, events, evidence,
//! artifacts and transfer metadata live in PostgreSQL; archive and artifact bytes and
//! staged-transfer chunks live in a content-addressed directory given in the
//! configuration. It passes the whole `store_conformance!` suite of `crownest-core`
//! against a real server.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> crownest_core::Result<()> {
//! use crownest_core::event::{EventKind, NewEvent, OutputChunk};
//! use crownest_core::run::RunOwner;
//! use crownest_core::store::{RunCommit, Store};
//! use crownest_core::{Limits, RunId, RunRecord, RunSpec};
//! use crownest_store_postgres::{PostgresConfig, PostgresStore};
//!
//! let config = PostgresConfig::new("postgres://crownest@127.0.0.1:5432/crownest", "/var/lib/crownest/blobs")
//!     .with_schema("crownest");
//! let store = PostgresStore::open(config).await?; // migrates the schema
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
//! // `commit` returned: the transaction is committed, and every reader on every host sees it.
//! assert_eq!(store.list_events(&id, 0, 100).await?, sealed);
//! # Ok(())
//! # }
//! ```
//!
//! An engine uses it like any store:
//! `WorkspaceRuns::builder(Arc::new(store)).backend(...).open().await`.
//!
//! ## Why `tokio-postgres` + `deadpool-postgres`
//!
//! `tokio-postgres` (the rust-postgres project) is the long-standing asynchronous driver
//! beneath most of the ecosystem's PostgreSQL code; it speaks the protocol directly,
//! pipelines queries, exposes SQLSTATE codes, and needs no database at compile time.
//! `deadpool-postgres` is the small, widely used pool for it, with a per-connection
//! prepared-statement cache. `sqlx` would do too, but brings a larger dependency tree and
//! build time (this project builds on 2 cores) for features the store does not use (compile-time
//! checked queries, other databases). TLS is not wired yet (`NoTls`): connect over a unix
//! socket, a private network, or a TLS-terminating proxy.
//!
//! ## What it does
//!
//! | concern | how |
//! |---|---|
//! | schema | versioned steps recorded in a `schema_version` table, applied at [`PostgresStore::open`] in one transaction under an advisory lock (several processes opening at once migrate once); a newer database is refused; an optional schema of its own ([`PostgresConfig::with_schema`]) |
//! | `commit` | ONE transaction: the run row read `FOR UPDATE`, `crownest_core::store::prepare_commit` (the checks, `seal_all` from the stored chain head, the evidence check, the new record), events inserted under the `(run_id, seq)` primary key, the run row, its artifacts and (with `terminal`) the Evidence Bundle written; committed or nothing |
//! | concurrency | commits to one run from any process or host queue on its row lock; the later one sees the new `next_seq` and gets `Error::Conflict`, never a fork of the chain or a gap; commits to different runs do not wait for each other |
//! | reads | pooled connections, prepared statements cached per connection; a read sees every commit that returned before it started |
//! | JSON | `text` columns (records, events, evidence): exactly the serialized bytes; `jsonb` would refuse the `\u0000` that command output may hold |
//! | blobs | streamed into `<blob_dir>/tmp` while hashed (sha256) and counted, never whole in memory; size, digest and `max_bytes` enforced (`ArchiveRejected`, nothing kept); fsynced, renamed to `<blob_dir>/blobs/ab/cdef...` and recorded in one transaction holding the blob's advisory lock (bytes first, row second); same bytes stored once |
//! | transfers | chunk bytes staged and fsynced, then moved to `<blob_dir>/transfers/<id>/<index>` and recorded while the transfer's row is locked |
//! | `discard_blob`, gc | row first, then bytes, under the blob's advisory lock, and only for blobs no run or artifact names; a commit that names a blob takes the same lock (shared) and checks it still exists |
//!
//! ## Blobs
//!
//! The bytes sit behind a small internal trait (the blob backend), so a backend on the
//! `object_store` crate (S3, GCS, Azure) can replace the directory without touching the
//! SQL. Until then, several hosts share blobs only if `blob_dir` is one shared directory
//! (e.g. NFS with close-to-open consistency); otherwise an archive uploaded to host A is not
//! readable on host B, and the chunks of one staged transfer must all reach the same host.
//!
//! ## Durability: what is stored when a call returns
//!
//! * `create_run`, `commit`, `request_cancel`, transfers: the transaction is committed, so
//!   with the server's defaults (`fsync = on`, `synchronous_commit = on`) its WAL record is
//!   flushed; what a replica has depends on the server's replication settings. A call that
//!   failed wrote nothing, except when the connection broke during `COMMIT` (the error says
//!   the outcome is unknown).
//! * `put_blob`, `put_chunk`: the file is fsynced and renamed into place, its directory
//!   fsynced, then the row committed. A row never names missing bytes; bytes whose row
//!   never committed are removed by gc.
//!
//! ## Not done here
//!
//! Leases, a shared run queue, `LISTEN/NOTIFY` wake-ups and an object-store blob backend
//! are later steps of the scale-out work (the repository's `docs/scale-out.md`). Today a
//! run is still owned by its engine's process (pid + start time), which is meaningful only
//! on the host that runs it: engines (`WorkspaceRuns`) on several hosts must not share one
//! store yet, because an engine's recovery at open would judge another host's live runs by
//! its own process table and fail them. Several processes on one host are fine, and other
//! hosts may use the `Store` API directly (read, follow, cancel). Runs are never deleted.

mod blob_url;
mod blobs;
mod config;
mod error;
mod gc;
mod localdir;
mod objstore;
mod pool;
mod runs;
#[doc(hidden)]
pub mod schema;
mod store;
mod transfers;
mod usage;

pub use blob_url::{BlobLocation, BlobScheme, BlobUrl, BlobUrlError, BlobUrlProblem};
pub use config::PostgresConfig;
pub use objstore::{BlobStreamStats, PARTS_IN_FLIGHT, PART_SIZE, READ_AHEAD};
pub use store::PostgresStore;

pub use crownest_core::gc::{GcPolicy, StoreGcReport};
pub use crownest_core::store::Store;
