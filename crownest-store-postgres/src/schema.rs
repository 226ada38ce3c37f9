//! The versioned schema: migrations applied at open, recorded in `schema_version`.
//!
//! All pending steps run in ONE transaction that first takes a transaction-scoped advisory
//! lock for the store's schema, then reads `schema_version`: several processes opening the
//! same store at once queue on the lock, the first migrates, the others find the work done.
//! PostgreSQL's DDL is transactional, so a failed step leaves the schema as it was. A
//! database newer than this build knows is refused rather than misread.
//!
//! Columns holding JSON (`record`, `event`, `bundle`) are `text`, not `jsonb`: `jsonb`
//! refuses the `\u0000` escape that command output may contain, and `text` keeps the
//! serialized bytes exactly as they were written.

use crownest_core::{Error, Result};
use tokio_postgres::{Client, GenericClient};

use crate::error::{commit_failed, db};

/// One schema step.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version after this step.
    pub version: i32,
    /// What it does.
    pub description: &'static str,
    /// The SQL (unqualified names: the connection's `search_path` starts with the schema).
    pub sql: &'static str,
}

/// Every schema step, in order. Append only: a released step is never edited.
#[doc(hidden)]
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "runs, events, evidence, artifacts, blobs, transfers and chunks",
        sql: r#"
CREATE TABLE runs (
    id               text COLLATE "C" PRIMARY KEY,      -- time-ordered: list order
    status           text        NOT NULL,
    idempotency_key  bytea       UNIQUE,                 -- bytes: any string is a valid key
    next_seq         bigint      NOT NULL CHECK (next_seq >= 1),
    chain_head       text        NOT NULL,
    cancel_requested boolean     NOT NULL DEFAULT false,
    archive_sha256   text,
    record           text        NOT NULL,               -- RunRecord JSON
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_archive ON runs (archive_sha256) WHERE archive_sha256 IS NOT NULL;

CREATE TABLE events (
    run_id text COLLATE "C" NOT NULL REFERENCES runs (id),
    seq    bigint NOT NULL CHECK (seq >= 1),
    event  text   NOT NULL,                              -- sealed Event JSON
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE evidence (
    run_id   text COLLATE "C" PRIMARY KEY REFERENCES runs (id),
    bundle   text NOT NULL,                              -- EvidenceBundle JSON
    envelope text                                        -- DsseEnvelope JSON, or NULL
);

CREATE TABLE artifacts (
    artifact_id text COLLATE "C" PRIMARY KEY,
    run_id      text COLLATE "C" NOT NULL REFERENCES runs (id),
    sha256      text NOT NULL,
    record      text NOT NULL                            -- Artifact JSON
);
CREATE INDEX artifacts_by_run ON artifacts (run_id);
CREATE INDEX artifacts_by_sha256 ON artifacts (sha256);

CREATE TABLE blobs (
    sha256    text COLLATE "C" PRIMARY KEY,
    size      bigint      NOT NULL,
    stored_at timestamptz NOT NULL                       -- last put (gc grace)
);

CREATE TABLE transfers (
    transfer_id text COLLATE "C" PRIMARY KEY,
    run_id      text COLLATE "C" NOT NULL,
    record      text        NOT NULL,                    -- TransferRecord JSON, `received` empty
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()       -- last chunk (gc ttl)
);
CREATE INDEX transfers_by_run ON transfers (run_id);

CREATE TABLE chunks (
    transfer_id text COLLATE "C" NOT NULL REFERENCES transfers (transfer_id) ON DELETE CASCADE,
    idx         bigint NOT NULL,
    size        bigint NOT NULL,
    PRIMARY KEY (transfer_id, idx)
);
"#,
    },
    Migration {
        version: 2,
        description: "leases and the shared queue (runs.backend, runs.claimable)",
        sql: r#"
ALTER TABLE runs ADD COLUMN backend text;
ALTER TABLE runs ADD COLUMN claimable boolean NOT NULL DEFAULT false;
UPDATE runs SET backend = (record::jsonb ->> 'backend');
CREATE INDEX runs_claimable ON runs (backend, id) WHERE claimable;

CREATE TABLE leases (
    instance   text COLLATE "C" PRIMARY KEY,             -- the engine instance
    expires_at timestamptz NOT NULL,                     -- by the server's clock
    renewed_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

/// Class of the advisory lock that serializes migrations (`'CrNm'`).
const MIGRATION_LOCK_CLASS: i32 = 0x4372_4e6d;

/// The advisory-lock object id of a schema (FNV-1a of its name).
fn schema_lock_id(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// Brings the schema to [`SCHEMA_VERSION`]; returns the version found before.
pub(crate) async fn migrate(client: &mut Client, schema: Option<&str>) -> Result<i32> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// The version recorded in `schema_version` (0 when the table is missing).
#[doc(hidden)]
pub async fn current_version(client: &impl GenericClient) -> Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(|e| db("looking for schema_version", e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| db("reading schema_version", e))
}

/// Applies the steps up to `target` (tests use it to make an old schema); returns the
/// version found before.
#[doc(hidden)]
pub async fn migrate_to(client: &mut Client, schema: Option<&str>, target: i32) -> Result<i32> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting the migration", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK_CLASS, &schema_lock_id(schema.unwrap_or(""))],
    )
    .await
    .map_err(|e| db("taking the migration lock", e))?;
    if let Some(schema) = schema {
        // The name was checked (`PostgresConfig::checked_schema`): a plain identifier.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| db("creating the schema", e))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| db("creating schema_version", e))?;
    let before = current_version(&tx).await?;
    if before > SCHEMA_VERSION {
        return Err(Error::Store {
            message: format!(
                "the database has schema version {before}, newer than this build's {SCHEMA_VERSION}"
            ),
            source: None,
        });
    }
    for step in MIGRATIONS
        .iter()
        .filter(|m| m.version > before && m.version <= target)
    {
        tx.batch_execute(step.sql).await.map_err(|e| {
            db(
                &format!("migration {} ({})", step.version, step.description),
                e,
            )
        })?;
        tx.execute(
            "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
            &[&step.version, &step.description],
        )
        .await
        .map_err(|e| db("recording a migration", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| commit_failed("committing the migration", e))?;
    Ok(before)
}
