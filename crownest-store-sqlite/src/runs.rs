//! Runs, events, evidence and artifacts: the SQL behind the run half of the `Store` trait.
//!
//! The `runs` row carries `next_seq`, `chain_head` and `cancel_requested` as columns (the
//! authority, read inside the write transaction) and the whole [`RunRecord`] as JSON, kept
//! in step with the columns on every write.

use crownest_core::signing::DsseEnvelope;
use crownest_core::store::{CreateOutcome, PreparedCommit, RunCommit, RunQuery, prepare_commit};
use crownest_core::{
    Artifact, ArtifactId, Error, Event, EvidenceBundle, RunId, RunRecord, RunStatus,
};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::{Fatal as _, OpError, from_json, to_json};

/// `u64` → SQLite integer (saturating: ids and sizes never get near `i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQLite integer → `u64` (negative values, which the store never writes, read as 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The store-maintained columns of a `runs` row plus its record.
fn row_to_record(
    record: &str,
    next_seq: i64,
    chain_head: String,
    cancel_requested: bool,
) -> Result<RunRecord, OpError> {
    let mut r: RunRecord = from_json("run record", record)?;
    r.next_seq = to_u64(next_seq);
    r.chain_head = chain_head;
    r.cancel_requested = cancel_requested;
    Ok(r)
}

const RUN_COLUMNS: &str = "record, next_seq, chain_head, cancel_requested";

fn query_runs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RunRecord>, OpError> {
    let mut st = conn.prepare_cached(sql).fatal("preparing a run query")?;
    let rows = st
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })
        .fatal("querying runs")?;
    let mut out = Vec::new();
    for row in rows {
        let (record, next_seq, head, cancel) = row.fatal("reading a run")?;
        out.push(row_to_record(&record, next_seq, head, cancel)?);
    }
    Ok(out)
}

/// One run, if it exists.
pub(crate) fn read_run(conn: &Connection, id: &RunId) -> Result<Option<RunRecord>, OpError> {
    Ok(query_runs(
        conn,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id.as_str()],
    )?
    .pop())
}

fn run_exists(conn: &Connection, id: &RunId) -> Result<bool, OpError> {
    conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
        .and_then(|mut st| st.exists([id.as_str()]))
        .fatal("looking up a run")
}

/// `get_run`.
pub(crate) fn get_run(conn: &Connection, id: &RunId) -> Result<RunRecord, OpError> {
    read_run(conn, id)?.ok_or_else(|| Error::not_found("run", id).into())
}

/// `list_runs`: newest (largest id) first, like `MemoryStore`, filtered as
/// [`RunQuery::matches`] says. Backend, labels and creation time are read from the record's
/// JSON (`json_extract`, `json_each`); timestamps are fixed-width RFC 3339 UTC strings, so
/// comparing them as text compares the instants.
pub(crate) fn list_runs(conn: &Connection, q: &RunQuery) -> Result<Vec<RunRecord>, OpError> {
    let limit = if q.limit == 0 { 100 } else { q.limit };
    let labels = if q.labels.is_empty() {
        None
    } else {
        Some(to_json("label filter", &q.labels)?)
    };
    query_runs(
        conn,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR status = ?2)
               AND (?4 IS NULL OR json_extract(record, '$.backend') = ?4)
               AND (?5 IS NULL OR json_extract(record, '$.timestamps.created') >= ?5)
               AND (?6 IS NULL OR json_extract(record, '$.timestamps.created') < ?6)
               AND (?7 IS NULL OR NOT EXISTS (
                   SELECT 1 FROM json_each(?7) AS want
                   WHERE NOT EXISTS (
                       SELECT 1 FROM json_each(record, '$.spec.labels') AS have
                       WHERE have.key = want.key AND have.value = want.value)))
             ORDER BY id DESC LIMIT ?3"
        ),
        params![
            q.before.as_ref().map(RunId::as_str),
            q.status.map(RunStatus::as_str),
            to_i64(limit as u64),
            q.backend.as_deref(),
            q.created_after.map(|t| t.to_string()),
            q.created_before.map(|t| t.to_string()),
            labels,
        ],
    )
}

/// Writer op: `delete_run` of an ended run, with its events, evidence, artifact rows and
/// transfers.
pub(crate) fn delete_run(
    conn: &Connection,
    ctx: &mut crate::writer::OpCtx<'_>,
    id: &RunId,
) -> Result<(), OpError> {
    let run = get_run(conn, id)?;
    if !run.status.is_terminal() {
        return Err(Error::InvalidTransition {
            from: run.status,
            input: "delete",
        }
        .into());
    }
    let transfers: Vec<String> = {
        let mut st = conn
            .prepare_cached("SELECT transfer_id FROM transfers WHERE run_id = ?1")
            .fatal("preparing the transfer query")?;
        let rows = st
            .query_map([id.as_str()], |r| r.get(0))
            .fatal("listing a run's transfers")?;
        rows.collect::<rusqlite::Result<_>>()
            .fatal("reading a run's transfers")?
    };
    for t in transfers {
        let t = crownest_core::TransferId::parse(&t).map_err(OpError::Logical)?;
        crate::transfers::delete(conn, ctx, &t)?;
    }
    for sql in [
        "DELETE FROM artifacts WHERE run_id = ?1",
        "DELETE FROM evidence WHERE run_id = ?1",
        "DELETE FROM events WHERE run_id = ?1",
        "DELETE FROM runs WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([id.as_str()]))
            .fatal("deleting a run")?;
    }
    Ok(())
}

/// `list_unfinished`: every run not in a terminal state, oldest id first.
///
/// Asked as `status IN (every non-terminal state)`, a search of `runs_by_status`, so the
/// recovery beside every `crownest run` costs what the unfinished runs cost, not what the
/// home's whole history does (`status NOT IN (...)` scanned every run's record).
pub(crate) fn list_unfinished(conn: &Connection) -> Result<Vec<RunRecord>, OpError> {
    query_runs(conn, &unfinished_query(), [])
}

fn unfinished_query() -> String {
    let unfinished: Vec<String> = RunStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({}) ORDER BY id",
        unfinished.join(",")
    )
}

/// `list_events`.
pub(crate) fn list_events(
    conn: &Connection,
    id: &RunId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Event>, OpError> {
    if !run_exists(conn, id)? {
        return Err(Error::not_found("run", id).into());
    }
    let mut st = conn
        .prepare_cached(
            "SELECT event FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .fatal("preparing the event query")?;
    let rows = st
        .query_map(
            params![id.as_str(), to_i64(after_seq), to_i64(limit as u64)],
            |r| r.get::<_, String>(0),
        )
        .fatal("querying events")?;
    let mut out = Vec::new();
    for row in rows {
        out.push(from_json("event", &row.fatal("reading an event")?)?);
    }
    Ok(out)
}

/// `get_evidence_envelope`.
pub(crate) fn get_evidence_envelope(
    conn: &Connection,
    id: &RunId,
) -> Result<Option<DsseEnvelope>, OpError> {
    let row: Option<Option<String>> = conn
        .prepare_cached("SELECT envelope FROM evidence WHERE run_id = ?1")
        .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)).optional())
        .fatal("reading the evidence envelope")?;
    match row {
        Some(Some(env)) => Ok(Some(from_json("evidence envelope", &env)?)),
        Some(None) => Ok(None),
        None if run_exists(conn, id)? => Err(Error::NotTerminal {
            run_id: id.to_string(),
        }
        .into()),
        None => Err(Error::not_found("run", id).into()),
    }
}

/// `get_evidence`.
pub(crate) fn get_evidence(conn: &Connection, id: &RunId) -> Result<EvidenceBundle, OpError> {
    let bundle: Option<String> = conn
        .prepare_cached("SELECT bundle FROM evidence WHERE run_id = ?1")
        .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)).optional())
        .fatal("reading evidence")?;
    match bundle {
        Some(b) => from_json("evidence", &b),
        None if run_exists(conn, id)? => Err(Error::NotTerminal {
            run_id: id.to_string(),
        }
        .into()),
        None => Err(Error::not_found("run", id).into()),
    }
}

/// `get_artifact`: one indexed lookup.
pub(crate) fn get_artifact(conn: &Connection, id: &ArtifactId) -> Result<Artifact, OpError> {
    let record: Option<String> = conn
        .prepare_cached("SELECT record FROM artifacts WHERE artifact_id = ?1")
        .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)).optional())
        .fatal("reading an artifact")?;
    match record {
        Some(r) => from_json("artifact", &r),
        None => Err(Error::not_found("artifact", id).into()),
    }
}

/// Replaces the `artifacts` rows of a run with the artifacts of its record.
fn write_artifacts(
    conn: &Connection,
    id: &RunId,
    artifacts: &[Artifact],
    had_any: bool,
) -> Result<(), OpError> {
    if had_any {
        conn.prepare_cached("DELETE FROM artifacts WHERE run_id = ?1")
            .and_then(|mut st| st.execute([id.as_str()]))
            .fatal("replacing artifacts")?;
    }
    let mut st = conn
        .prepare_cached("INSERT OR IGNORE INTO artifacts (artifact_id, run_id, sha256, record) VALUES (?1, ?2, ?3, ?4)")
        .fatal("preparing the artifact insert")?;
    for a in artifacts {
        st.execute(params![
            a.artifact_id.as_str(),
            id.as_str(),
            a.sha256.as_str(),
            to_json("artifact", a)?
        ])
        .fatal("storing an artifact")?;
    }
    Ok(())
}

fn archive_sha(r: &RunRecord) -> Option<&str> {
    r.archive.as_ref().map(|a| a.sha256.as_str())
}

/// `create_run` (inside the write transaction).
pub(crate) fn create_run(conn: &Connection, run: RunRecord) -> Result<CreateOutcome, OpError> {
    if let Some(key) = &run.spec.idempotency_key {
        let existing: Option<String> = conn
            .prepare_cached("SELECT id FROM runs WHERE idempotency_key = ?1")
            .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
            .fatal("looking up the idempotency key")?;
        if let Some(existing) = existing {
            let existing = RunId::parse(&existing)?;
            return Ok(CreateOutcome::Existing(get_run(conn, &existing)?));
        }
    }
    if run_exists(conn, &run.id)? {
        return Err(Error::Conflict {
            message: format!("run {} already exists", run.id),
        }
        .into());
    }
    let json = to_json("run record", &run)?;
    conn.prepare_cached(
        "INSERT INTO runs (id, status, idempotency_key, next_seq, chain_head, cancel_requested, archive_sha256, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            run.id.as_str(),
            run.status.as_str(),
            run.spec.idempotency_key,
            to_i64(run.next_seq),
            run.chain_head,
            run.cancel_requested,
            archive_sha(&run),
            json,
        ])
    })
    .fatal("inserting a run")?;
    if !run.artifacts.is_empty() {
        write_artifacts(conn, &run.id, &run.artifacts, false)?;
    }
    Ok(CreateOutcome::Created(run))
}

fn update_run(conn: &Connection, r: &RunRecord) -> Result<(), OpError> {
    let json = to_json("run record", r)?;
    conn.prepare_cached(
        "UPDATE runs SET status = ?2, next_seq = ?3, chain_head = ?4, cancel_requested = ?5,
                         archive_sha256 = ?6, record = ?7
         WHERE id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.id.as_str(),
            r.status.as_str(),
            to_i64(r.next_seq),
            r.chain_head,
            r.cancel_requested,
            archive_sha(r),
            json
        ])
    })
    .fatal("updating a run")?;
    Ok(())
}

/// `commit` (inside the write transaction, under its own savepoint): the stored row, the
/// shared rule ([`prepare_commit`]), then the writes.
pub(crate) fn commit(
    conn: &Connection,
    id: &RunId,
    commit: RunCommit,
) -> Result<Vec<Event>, OpError> {
    let stored = get_run(conn, id)?;
    let PreparedCommit {
        events: sealed,
        record,
        evidence,
        envelope,
    } = prepare_commit(id, &stored, commit)?;

    if !sealed.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO events (run_id, seq, event) VALUES (?1, ?2, ?3)")
            .fatal("preparing the event insert")?;
        for e in &sealed {
            st.execute(params![id.as_str(), to_i64(e.seq), to_json("event", e)?])
                .fatal("appending an event")?;
        }
    }
    update_run(conn, &record)?;
    if record.artifacts != stored.artifacts {
        write_artifacts(conn, id, &record.artifacts, !stored.artifacts.is_empty())?;
    }
    if let Some(ev) = &evidence {
        let json = to_json("evidence", ev)?;
        let envelope = match &envelope {
            Some(env) => Some(to_json("evidence envelope", env)?),
            None => None,
        };
        conn.prepare_cached(
            "INSERT OR REPLACE INTO evidence (run_id, bundle, envelope) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut st| st.execute(params![id.as_str(), json, envelope]))
        .fatal("storing evidence")?;
    }
    Ok(sealed)
}

/// `request_cancel` (inside the write transaction).
pub(crate) fn request_cancel(conn: &Connection, id: &RunId) -> Result<RunRecord, OpError> {
    let mut run = get_run(conn, id)?;
    if !run.status.is_terminal() && !run.cancel_requested {
        run.cancel_requested = true;
        update_run(conn, &run)?;
    }
    Ok(run)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schema::{connect, migrate};

    /// Recovery runs beside every `crownest run`: its query must search the status index,
    /// not read every run the home ever had.
    #[test]
    fn the_unfinished_runs_are_found_through_the_status_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("crownest.db"), Duration::from_secs(10)).unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", unfinished_query()))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH runs USING INDEX runs_by_status")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
        // Every state the engine can leave a run in unfinished is asked for.
        for s in RunStatus::ALL.iter().filter(|s| !s.is_terminal()) {
            assert!(unfinished_query().contains(&format!("'{}'", s.as_str())));
        }
    }
}
