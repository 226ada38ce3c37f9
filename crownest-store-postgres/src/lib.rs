//! # crownest-store-postgres
//!
//! [`PostgresStore`]: the CrowNest [`Store`] on a **PostgreSQL** server, for several engine
//! processes (on one host or many) sharing one durable record. Runs, events, evidence,
//! artifacts and transfer metadata live in PostgreSQL; archive and artifact bytes and
//! staged-transfer chunks live content-addressed in a directory or in an object store
//! (`file://`, and `s3://`, `gs://`, `az://` behind cargo features) given in the
//! configuration. It passes the whole `store_conformance!` suite of `crownest-core` against
//! a real server, with either blob backend.
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
//! | blobs | streamed into `tmp/` while hashed (sha256) and counted, never whole in memory; size, digest and `max_bytes` enforced (`ArchiveRejected`, nothing kept); made durable, moved to `blobs/ab/cdef...` and recorded in one transaction holding the blob's advisory lock (bytes first, row second); same bytes stored once |
//! | transfers | chunk bytes staged, then moved to `transfers/<id>/<index>` and recorded while the transfer's row is locked |
//! | `discard_blob`, gc | row first, then bytes, under the blob's advisory lock, and only for blobs no run or artifact names; a commit that names a blob takes the same lock (shared) and checks it still exists |
//!
//! ## Blobs
//!
//! The bytes sit behind a small internal trait (the blob backend); the SQL, the locks and
//! the guarantees are the same for both backends. Where they go is
//! [`PostgresConfig::blobs`], a [`BlobLocation`]:
//!
//! | configuration | backend | for |
//! |---|---|---|
//! | `PostgresConfig::new(url, "/var/lib/crownest/blobs")` (a plain path) | the directory backend: files written on a blocking thread, fsynced, renamed into place, the directory fsynced (core's `blob_dir`, shared with the SQLite store) | one host, or hosts sharing one filesystem (NFS with close-to-open consistency) |
//! | `.with_blob_url("file:///var/lib/crownest/blobs")?` | `object_store`'s `LocalFileSystem` rooted there, fsync on | tests and single hosts through the object-store code path; the same layout, so a directory can be opened either way |
//! | `.with_blob_url("s3://bucket/prefix")?` (feature `s3`) | `AmazonS3Builder::from_env()`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` (S3-compatible stores), ... | hosts that share nothing but the database and the bucket |
//! | `.with_blob_url("gs://bucket/prefix")?` (feature `gcp`) | `GoogleCloudStorageBuilder::from_env()`: `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`, ... | the same |
//! | `.with_blob_url("az://container/prefix")?` (feature `azure`) | `MicrosoftAzureBuilder::from_env()`: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ... | the same |
//!
//! A URL that does not parse, names another scheme, or needs a feature this build lacks is a
//! [`BlobUrlError`] naming it ([`BlobUrlProblem`] says why); a path that looks like a URL is
//! refused at open. **Why a plain path keeps the directory backend** rather than becoming a
//! `file://` URL: it is the code and layout the SQLite store shares (a directory moves
//! between the stores), its staging files are plain files gc can see (`LocalFileSystem`
//! keeps a multipart upload in a `name#n` file its listing hides, which the `file://`
//! backend sweeps from disk itself), and existing deployments keep exactly the behaviour
//! they have.
//!
//! The object-store backend:
//!
//! * **uploads** are hashed and counted as they stream in, gathered into parts of
//!   [`PART_SIZE`] (8 MiB): a blob that fits in one part is one `put`, a larger one a
//!   multipart upload with at most [`PARTS_IN_FLIGHT`] parts in flight plus the one being
//!   filled (24 MiB per upload at most, whatever the blob's size). Over `max_bytes`, a
//!   failed stream, or a size or digest mismatch (checked before the upload is completed)
//!   aborts the upload: no object, no row;
//! * **installs** with `rename_if_not_exists` from `tmp/` to `blobs/ab/cdef...` where the
//!   store supports it (`LocalFileSystem`, and cloud stores whose copy takes a
//!   precondition; an object already there holds the same bytes and is kept), else `rename`
//!   (e.g. S3 without a copy-if-not-exists setting: copy and delete, replacing equal bytes);
//! * **reads** `get` as a stream adapted to the blocking `BlobReader` by a pump thread and a
//!   channel of [`READ_AHEAD`] chunks (`LocalFileSystem` hands over the open file itself);
//! * keeps each **chunk** of a staged transfer as an object `transfers/<id>/<index>`, so
//!   consecutive chunks may reach different hosts, and any host reads the whole transfer;
//! * reports what its streaming did: [`PostgresStore::blob_stream_stats`].
//!
//! On S3, GCS and Azure a process killed during a multipart upload leaves an incomplete
//! upload that no listing shows: give the bucket a lifecycle rule that aborts incomplete
//! multipart uploads after a day (the `AbortIncompleteMultipartUpload` action on S3 and on
//! GCS; Azure discards uncommitted blocks after a week by itself). Staged objects under `tmp/` that a crash
//! left complete are removed by gc after `temp_ttl`.
//!
//! ## Durability: what is stored when a call returns
//!
//! * `create_run`, `commit`, `request_cancel`, transfers: the transaction is committed, so
//!   with the server's defaults (`fsync = on`, `synchronous_commit = on`) its WAL record is
//!   flushed; what a replica has depends on the server's replication settings. A call that
//!   failed wrote nothing, except when the connection broke during `COMMIT` (the error says
//!   the outcome is unknown).
//! * `put_blob`, `put_chunk`: the bytes are durable at their address (directory: the file
//!   fsynced and renamed, its directory fsynced; `file://`: the same through
//!   `LocalFileSystem` with fsync on; a cloud store: the write acknowledged), then the row
//!   committed. A row never names missing bytes; bytes whose row never committed are
//!   removed by gc.
//!
//! ## Not done here
//!
//! Leases, a shared run queue and `LISTEN/NOTIFY` wake-ups are later steps of the
//! scale-out work (the repository's `docs/scale-out.md`). Today a run is still owned by its engine's process (pid + start time), which is meaningful only
//! on the host that runs it: engines (`WorkspaceRuns`) on several hosts must not share one
//! store yet, because an engine's recovery at open would judge another host's live runs by
//! its own process table and fail them. Several processes on one host are fine, and other
//! hosts may use the `Store` API directly (read, follow, cancel). Runs are never deleted.

mod blob_url;
mod blobs;
mod config;
mod coordination;
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
pub use config::{PostgresConfig, redact as redact_url};
pub use objstore::{BlobStreamStats, PART_SIZE, PARTS_IN_FLIGHT, READ_AHEAD};
pub use store::PostgresStore;

pub use crownest_core::gc::{GcPolicy, StoreGcReport};
pub use crownest_core::store::Store;
