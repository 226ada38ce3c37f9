//! `usage`: runs per status and blob bytes, by two aggregate queries (the `runs_by_status`
//! index answers the first without reading a record).

use crownest_core::RunStatus;
use crownest_core::store::StoreUsage;
use rusqlite::Connection;

use crate::error::{Fatal as _, OpError};
use crate::runs::to_u64;

pub(crate) fn usage(conn: &Connection) -> Result<StoreUsage, OpError> {
    let mut usage = StoreUsage::default();
    let mut st = conn
        .prepare_cached("SELECT status, COUNT(*) FROM runs GROUP BY status")
        .fatal("preparing the run count")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .fatal("counting runs")?;
    for row in rows {
        let (status, n) = row.fatal("counting runs")?;
        if let Some(status) = RunStatus::parse(&status) {
            usage.runs_by_status.insert(status, to_u64(n));
        }
    }
    let bytes: i64 = conn
        .query_row("SELECT COALESCE(SUM(size), 0) FROM blobs", [], |r| r.get(0))
        .fatal("summing blob sizes")?;
    usage.blob_bytes = Some(to_u64(bytes));
    Ok(usage)
}
