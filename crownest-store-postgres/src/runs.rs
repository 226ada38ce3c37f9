//! Runs, events, evidence and artifacts: the SQL behind the run half of the `Store` trait.
//!
//! The `runs` row carries `next_seq`, `chain_head` and `cancel_requested` as columns (the
//! authority, read `FOR UPDATE` inside the commit transaction) and the whole [`RunRecord`]
//! as JSON, kept in step with the columns on every write.

use std::collections::BTreeSet;

use crownest_core::signing::DsseEnvelope;
use crownest_core::store::{CreateOutcome, PreparedCommit, RunCommit, RunQuery, prepare_commit};
use crownest_core::{
    Artifact, ArtifactId, Error, Event, EvidenceBundle, Result, RunId, RunRecord, RunStatus,
    Sha256Digest,
};
use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::blobs::{lock_key, to_i64, to_u64};
use crate::error::{commit_failed, db, from_json, is_unique_violation, to_json};

const RUN_COLUMNS: &str = "record, next_seq, chain_head, cancel_requested";

/// Prepares (once per connection) and runs a query.
pub(crate) async fn query(
    c: &impl GenericClient,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(|e| db(what, e))?;
    c.query(&st, params).await.map_err(|e| db(what, e))
}

/// Prepares (once per connection) and executes a statement; rows affected.
pub(crate) async fn execute(
    c: &impl GenericClient,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let st = c.prepare_cached(sql).await.map_err(|e| db(what, e))?;
    c.execute(&st, params).await.map_err(|e| db(what, e))
}

/// The store-maintained columns of a `runs` row plus its record.
fn row_to_record(row: &Row) -> Result<RunRecord> {
    let mut r: RunRecord = from_json("run record", row.get::<_, &str>(0))?;
    r.next_seq = to_u64(row.get(1));
    r.chain_head = row.get(2);
    r.cancel_requested = row.get(3);
    Ok(r)
}

/// The names of the terminal states (`terminal`) or of the others.
fn statuses(terminal: bool) -> Vec<&'static str> {
    RunStatus::ALL
        .iter()
        .filter(|s| s.is_terminal() == terminal)
        .map(|s| s.as_str())
        .collect()
}

/// One run, if it exists (`lock`: `FOR UPDATE`, inside a transaction).
async fn read_run(c: &impl GenericClient, id: &RunId, lock: bool) -> Result<Option<RunRecord>> {
    let sql = if lock {
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")
    };
    query(c, "reading a run", &sql, &[&id.as_str()])
        .await?
        .first()
        .map(row_to_record)
        .transpose()
}

async fn run_exists(c: &impl GenericClient, id: &RunId) -> Result<bool> {
    Ok(!query(
        c,
        "looking up a run",
        "SELECT 1 FROM runs WHERE id = $1",
        &[&id.as_str()],
    )
    .await?
    .is_empty())
}

/// `get_run`.
pub(crate) async fn get_run(c: &impl GenericClient, id: &RunId) -> Result<RunRecord> {
    read_run(c, id, false)
        .await?
        .ok_or_else(|| Error::not_found("run", id))
}

/// `list_runs`: newest (largest id) first, like `MemoryStore`.
pub(crate) async fn list_runs(c: &impl GenericClient, q: &RunQuery) -> Result<Vec<RunRecord>> {
    let limit = if q.limit == 0 { 100 } else { q.limit };
    // Status and paging in SQL; backend, labels and creation time with the one rule
    // (`RunQuery::matches`) on the records, page by page until `limit` matched.
    let page = (limit * 4).clamp(100, 2000);
    let mut out = Vec::new();
    let mut before = q.before.as_ref().map(|b| b.as_str().to_owned());
    loop {
        let rows = query(
            c,
            "listing runs",
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE ($1::text IS NULL OR id < $1) AND ($2::text IS NULL OR status = $2)
                 ORDER BY id DESC LIMIT $3"
            ),
            &[
                &before,
                &q.status.map(RunStatus::as_str),
                &to_i64(page as u64),
            ],
        )
        .await?;
        let n = rows.len();
        for row in &rows {
            let record = row_to_record(row)?;
            before = Some(record.id.as_str().to_owned());
            if q.matches(&record) {
                out.push(record);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        if n < page {
            return Ok(out);
        }
    }
}

/// `delete_run`: an ended run's record, events, evidence, artifact records and transfers,
/// in one transaction (blobs go with the next garbage collection).
pub(crate) async fn delete_run(
    client: &mut deadpool_postgres::Object,
    blobs: &dyn crate::blobs::BlobBackend,
    id: &RunId,
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| crate::error::db("starting delete_run", e))?;
    let rows = query(
        &tx,
        "reading a run to delete",
        "SELECT status FROM runs WHERE id = $1 FOR UPDATE",
        &[&id.as_str()],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(Error::not_found("run", id));
    };
    let status = RunStatus::parse(row.get::<_, &str>(0))
        .ok_or_else(|| Error::invalid("status", "unknown status in the store"))?;
    if !status.is_terminal() {
        return Err(Error::InvalidTransition {
            from: status,
            input: "delete",
        });
    }
    let transfers = query(
        &tx,
        "listing a run's transfers",
        "SELECT transfer_id FROM transfers WHERE run_id = $1",
        &[&id.as_str()],
    )
    .await?;
    for sql in [
        "DELETE FROM chunks WHERE transfer_id IN (SELECT transfer_id FROM transfers WHERE run_id = $1)",
        "DELETE FROM transfers WHERE run_id = $1",
        "DELETE FROM artifacts WHERE run_id = $1",
        "DELETE FROM evidence WHERE run_id = $1",
        "DELETE FROM events WHERE run_id = $1",
        "DELETE FROM runs WHERE id = $1",
    ] {
        execute(&tx, "deleting a run", sql, &[&id.as_str()]).await?;
    }
    tx.commit()
        .await
        .map_err(|e| crate::error::db("committing delete_run", e))?;
    for row in &transfers {
        if let Ok(t) = crownest_core::TransferId::parse(row.get::<_, &str>(0)) {
            // Best effort: the rows are gone; leftover chunk files are removed by gc.
            let _ = blobs.delete_chunks(&t).await;
        }
    }
    Ok(())
}

/// `list_unfinished`: every run not in a terminal state, oldest id first (`status =
/// ANY(every non-terminal state)`: a search of `runs_by_status`, not a scan of every run
/// the store ever had).
pub(crate) async fn list_unfinished(c: &impl GenericClient) -> Result<Vec<RunRecord>> {
    let rows = query(
        c,
        "listing unfinished runs",
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = ANY($1) ORDER BY id"),
        &[&statuses(false)],
    )
    .await?;
    rows.iter().map(row_to_record).collect()
}

/// `list_events`.
pub(crate) async fn list_events(
    c: &impl GenericClient,
    id: &RunId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    let rows = query(
        c,
        "reading events",
        "SELECT event FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&id.as_str(), &to_i64(after_seq), &to_i64(limit as u64)],
    )
    .await?;
    if rows.is_empty() && !run_exists(c, id).await? {
        return Err(Error::not_found("run", id));
    }
    rows.iter()
        .map(|r| from_json("event", r.get::<_, &str>(0)))
        .collect()
}

/// `get_evidence_envelope`.
pub(crate) async fn get_evidence_envelope(
    c: &impl GenericClient,
    id: &RunId,
) -> Result<Option<DsseEnvelope>> {
    let rows = query(
        c,
        "reading the evidence envelope",
        "SELECT envelope FROM evidence WHERE run_id = $1",
        &[&id.as_str()],
    )
    .await?;
    match rows.first() {
        Some(r) => match r.get::<_, Option<&str>>(0) {
            Some(env) => Ok(Some(from_json("evidence envelope", env)?)),
            None => Ok(None),
        },
        None if run_exists(c, id).await? => Err(Error::NotTerminal {
            run_id: id.to_string(),
        }),
        None => Err(Error::not_found("run", id)),
    }
}

/// `get_evidence`.
pub(crate) async fn get_evidence(c: &impl GenericClient, id: &RunId) -> Result<EvidenceBundle> {
    let rows = query(
        c,
        "reading evidence",
        "SELECT bundle FROM evidence WHERE run_id = $1",
        &[&id.as_str()],
    )
    .await?;
    match rows.first() {
        Some(r) => from_json("evidence", r.get::<_, &str>(0)),
        None if run_exists(c, id).await? => Err(Error::NotTerminal {
            run_id: id.to_string(),
        }),
        None => Err(Error::not_found("run", id)),
    }
}

/// `get_artifact`: one indexed lookup.
pub(crate) async fn get_artifact(c: &impl GenericClient, id: &ArtifactId) -> Result<Artifact> {
    let rows = query(
        c,
        "reading an artifact",
        "SELECT record FROM artifacts WHERE artifact_id = $1",
        &[&id.as_str()],
    )
    .await?;
    match rows.first() {
        Some(r) => from_json("artifact", r.get::<_, &str>(0)),
        None => Err(Error::not_found("artifact", id)),
    }
}

/// Replaces the `artifacts` rows of a run with the artifacts of its record.
async fn write_artifacts(
    c: &impl GenericClient,
    id: &RunId,
    artifacts: &[Artifact],
    had_any: bool,
) -> Result<()> {
    if had_any {
        execute(
            c,
            "replacing artifacts",
            "DELETE FROM artifacts WHERE run_id = $1",
            &[&id.as_str()],
        )
        .await?;
    }
    if artifacts.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = artifacts.iter().map(|a| a.artifact_id.as_str()).collect();
    let shas: Vec<&str> = artifacts.iter().map(|a| a.sha256.as_str()).collect();
    let records = artifacts
        .iter()
        .map(|a| to_json("artifact", a))
        .collect::<Result<Vec<_>>>()?;
    execute(
        c,
        "storing artifacts",
        "INSERT INTO artifacts (artifact_id, run_id, sha256, record)
         SELECT a, $1, s, r FROM unnest($2::text[], $3::text[], $4::text[]) AS t(a, s, r)
         ON CONFLICT (artifact_id) DO NOTHING",
        &[&id.as_str(), &ids, &shas, &records],
    )
    .await?;
    Ok(())
}

/// Whether a record waits in the shared queue: `queued` and owned by nobody (see
/// `coordination.rs`).
pub(crate) fn claimable(r: &RunRecord) -> bool {
    r.status == RunStatus::Queued && r.owner.is_none()
}

fn archive_sha(r: &RunRecord) -> Option<&str> {
    r.archive.as_ref().map(|a| a.sha256.as_str())
}

/// `create_run`: one transaction (the run row and its artifact rows).
pub(crate) async fn create_run(client: &mut Object, run: RunRecord) -> Result<CreateOutcome> {
    let json = to_json("run record", &run)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting create_run", e))?;
    // ON CONFLICT DO NOTHING covers both keys: the id and the idempotency key. A concurrent
    // create with the same key waits for the first one's commit, then inserts nothing.
    let inserted = execute(
        &tx,
        "inserting a run",
        "INSERT INTO runs (id, status, idempotency_key, next_seq, chain_head, cancel_requested, archive_sha256, record, backend, claimable)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT DO NOTHING",
        &[
            &run.id.as_str(),
            &run.status.as_str(),
            &run.spec.idempotency_key.as_deref().map(str::as_bytes),
            &to_i64(run.next_seq),
            &run.chain_head,
            &run.cancel_requested,
            &archive_sha(&run),
            &json,
            &run.backend,
            &claimable(&run),
        ],
    )
    .await?;
    if inserted == 0 {
        if let Some(key) = &run.spec.idempotency_key {
            let rows = query(
                &tx,
                "looking up the idempotency key",
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = $1"),
                &[&key.as_bytes()],
            )
            .await?;
            if let Some(row) = rows.first() {
                return Ok(CreateOutcome::Existing(row_to_record(row)?));
            }
        }
        return Err(Error::Conflict {
            message: format!("run {} already exists", run.id),
        });
    }
    if !run.artifacts.is_empty() {
        write_artifacts(&tx, &run.id, &run.artifacts, false).await?;
    }
    tx.commit()
        .await
        .map_err(|e| commit_failed("committing create_run", e))?;
    Ok(CreateOutcome::Created(run))
}

/// Blobs the new record names that the stored one did not (archive, artifacts), sorted
/// (so concurrent commits take their locks in one order).
fn newly_named(stored: &RunRecord, record: &RunRecord) -> Vec<Sha256Digest> {
    let before: BTreeSet<&Sha256Digest> = stored
        .archive
        .iter()
        .map(|a| &a.sha256)
        .chain(stored.artifacts.iter().map(|a| &a.sha256))
        .collect();
    record
        .archive
        .iter()
        .map(|a| &a.sha256)
        .chain(record.artifacts.iter().map(|a| &a.sha256))
        .filter(|s| !before.contains(s))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `commit`: ONE transaction: the stored row, the shared rule ([`prepare_commit`]), then the
/// writes. The run row is read `FOR UPDATE`, so concurrent commits to one run (any process,
/// any host) queue, and the second sees the first's `next_seq`: `prepare_commit` refuses it
/// with `Conflict`.
/// The `(run_id, seq)` primary key is the backstop.
pub(crate) async fn commit(
    client: &mut Object,
    id: &RunId,
    commit: RunCommit,
) -> Result<Vec<Event>> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting a commit", e))?;
    let stored = read_run(&tx, id, true)
        .await?
        .ok_or_else(|| Error::not_found("run", id))?;
    let PreparedCommit {
        events: sealed,
        record,
        evidence,
        envelope,
    } = prepare_commit(id, &stored, commit)?;

    if !sealed.is_empty() {
        let seqs: Vec<i64> = sealed.iter().map(|e| to_i64(e.seq)).collect();
        let json = sealed
            .iter()
            .map(|e| to_json("event", e))
            .collect::<Result<Vec<_>>>()?;
        let st = tx
            .prepare_cached(
                "INSERT INTO events (run_id, seq, event)
                 SELECT $1, s, e FROM unnest($2::bigint[], $3::text[]) AS t(s, e)",
            )
            .await
            .map_err(|e| db("preparing the event insert", e))?;
        tx.execute(&st, &[&id.as_str(), &seqs, &json])
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict {
                        message: format!(
                            "run {id}: seq {} was appended by another writer",
                            stored.next_seq
                        ),
                    }
                } else {
                    db("appending events", e)
                }
            })?;
    }
    for sha in newly_named(&stored, &record) {
        // Shared with other commits, exclusive against discard/gc of this blob.
        execute(
            &tx,
            "locking a named blob",
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[&lock_key(&sha)],
        )
        .await?;
        if crate::blobs::size(&tx, &sha).await?.is_none() {
            return Err(Error::not_found("blob", &sha));
        }
    }
    execute(
        &tx,
        "updating a run",
        "UPDATE runs SET status = $2, next_seq = $3, chain_head = $4, archive_sha256 = $5, record = $6,
                         backend = $7, claimable = $8
         WHERE id = $1",
        &[
            &id.as_str(),
            &record.status.as_str(),
            &to_i64(record.next_seq),
            &record.chain_head,
            &archive_sha(&record),
            &to_json("run record", &record)?,
            &record.backend,
            &claimable(&record),
        ],
    )
    .await?;
    if record.artifacts != stored.artifacts {
        write_artifacts(&tx, id, &record.artifacts, !stored.artifacts.is_empty()).await?;
    }
    if let Some(ev) = &evidence {
        let envelope = match &envelope {
            Some(env) => Some(to_json("evidence envelope", env)?),
            None => None,
        };
        execute(
            &tx,
            "storing evidence",
            "INSERT INTO evidence (run_id, bundle, envelope) VALUES ($1, $2, $3)
             ON CONFLICT (run_id) DO UPDATE SET bundle = excluded.bundle,
                                                envelope = excluded.envelope",
            &[&id.as_str(), &to_json("evidence", ev)?, &envelope],
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|e| commit_failed("committing events", e))?;
    Ok(sealed)
}

/// `request_cancel`: one statement; a terminal run is returned unchanged.
pub(crate) async fn request_cancel(c: &impl GenericClient, id: &RunId) -> Result<RunRecord> {
    let rows = query(
        c,
        "requesting cancel",
        &format!(
            "UPDATE runs SET cancel_requested = true
             WHERE id = $1 AND status <> ALL($2)
             RETURNING {RUN_COLUMNS}"
        ),
        &[&id.as_str(), &statuses(true)],
    )
    .await?;
    match rows.first() {
        Some(row) => row_to_record(row),
        None => get_run(c, id).await,
    }
}
