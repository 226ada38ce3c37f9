//! `crownest gc`, and the periodic garbage collection of `crownest serve`: both run
//! [`WorkspaceRuns::collect_garbage`] (runs idle in `awaiting_archive` past their TTL end
//! `canceled` with evidence; staged transfers of runs that cannot use them are discarded;
//! the store deletes unreferenced blobs, idle transfers and stale temp files).
//!
//! `gc` prints one summary line per kind of thing removed (or `nothing to collect`), or with
//! `--json` the report as one JSON object (`expiredRuns`, `transfersDiscarded`, `store`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use crownest_core::gc::GcReport;
use crownest_core::{GcTask, WorkspaceRuns};

use crate::cli::GcArgs;
use crate::exit::Exit;
use crate::home;

/// `crownest gc`.
pub(crate) async fn gc(home_dir: &Path, args: GcArgs) -> anyhow::Result<Exit> {
    let engine = home::open_with(
        home_dir,
        &home::PoolSettings::default(),
        home::Readers::SameHost,
        |config, _| {
            if let Some(ttl) = args.awaiting_archive_ttl {
                config.awaiting_archive_ttl = ttl;
            }
            Ok(())
        },
    )
    .await?;
    let report = engine
        .collect_garbage()
        .await
        .context("collecting garbage")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let lines = summary(&report);
        if lines.is_empty() {
            println!("nothing to collect");
        }
        for line in lines {
            println!("{line}");
        }
    }
    Ok(Exit::Success)
}

/// For `serve`: a pass now and every `interval`; passes that removed something, and
/// failures, are reported on stderr.
pub(crate) fn spawn_periodic(engine: &WorkspaceRuns, interval: Duration) -> GcTask {
    engine.spawn_periodic_gc(interval, |pass| match pass {
        Ok(report) => {
            for line in summary(&report) {
                eprintln!("crownest: gc: {line}");
            }
        }
        Err(e) => eprintln!("crownest: gc failed: {}", e.chain()),
    })
}

/// One line per kind of thing removed; empty when nothing was.
fn summary(r: &GcReport) -> Vec<String> {
    let mut out = Vec::new();
    if !r.expired_runs.is_empty() {
        let ids: Vec<String> = r.expired_runs.iter().map(ToString::to_string).collect();
        out.push(format!(
            "expired {} run(s) idle in awaiting_archive (now canceled): {}",
            ids.len(),
            ids.join(" ")
        ));
    }
    if r.transfers_discarded > 0 {
        out.push(format!(
            "discarded {} staged transfer(s) of runs that no longer await an archive",
            r.transfers_discarded
        ));
    }
    let s = &r.store;
    if s.blobs_deleted > 0 {
        out.push(format!(
            "deleted {} unreferenced blob(s), {} bytes",
            s.blobs_deleted, s.blob_bytes_freed
        ));
    }
    if s.transfers_deleted > 0 {
        out.push(format!(
            "deleted {} idle staged transfer(s)",
            s.transfers_deleted
        ));
    }
    if s.orphan_blob_files_deleted > 0 {
        out.push(format!(
            "deleted {} blob file(s) without a record",
            s.orphan_blob_files_deleted
        ));
    }
    if s.temp_files_deleted > 0 {
        out.push(format!(
            "deleted {} stale temporary file(s)",
            s.temp_files_deleted
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_pass_has_no_summary_and_a_full_one_a_line_per_kind() {
        assert!(summary(&GcReport::default()).is_empty());
        let mut r = GcReport::default();
        r.expired_runs.push(crownest_core::RunId::new());
        r.transfers_discarded = 2;
        r.store.blobs_deleted = 3;
        r.store.blob_bytes_freed = 300;
        r.store.transfers_deleted = 1;
        r.store.orphan_blob_files_deleted = 1;
        r.store.temp_files_deleted = 4;
        let lines = summary(&r);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert!(lines[0].starts_with("expired 1 run(s)"), "{lines:?}");
        assert!(lines[2].contains("300 bytes"), "{lines:?}");
    }
}
