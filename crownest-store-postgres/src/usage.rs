//! `usage`: runs per status and blob bytes, by two aggregate queries.

use crownest_core::store::StoreUsage;
use crownest_core::{Result, RunStatus};
use deadpool_postgres::GenericClient;

use crate::blobs::to_u64;
use crate::runs::query;

pub(crate) async fn usage(c: &impl GenericClient) -> Result<StoreUsage> {
    let mut usage = StoreUsage::default();
    let rows = query(
        c,
        "counting runs",
        "SELECT status, COUNT(*) FROM runs GROUP BY status",
        &[],
    )
    .await?;
    for row in &rows {
        let status: String = row.get(0);
        let n: i64 = row.get(1);
        if let Some(status) = RunStatus::parse(&status) {
            usage.runs_by_status.insert(status, to_u64(n));
        }
    }
    let rows = query(
        c,
        "summing blob sizes",
        "SELECT COALESCE(SUM(size), 0)::bigint FROM blobs",
        &[],
    )
    .await?;
    let bytes: i64 = rows.first().map_or(0, |r| r.get(0));
    usage.blob_bytes = Some(to_u64(bytes));
    Ok(usage)
}
