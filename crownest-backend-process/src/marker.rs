//! The marker file of a sandbox directory (`crownest-sandbox.json`): which run, engine and
//! process own it, until when it is kept, and what processes it last ran. `sweep_orphans`
//! reads it to tell an orphan from a live sandbox.

use std::io;
use std::path::Path;

use crownest_core::Timestamp;
use crownest_core::run::RunOwner;
use serde::{Deserialize, Serialize};

use crate::containment::ProcessRecord;

/// File name of the marker inside a sandbox directory.
pub(crate) const MARKER: &str = "crownest-sandbox.json";

/// The marker's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Marker {
    pub(crate) schema: String,
    pub(crate) run_id: String,
    pub(crate) instance: String,
    pub(crate) owner: RunOwner,
    pub(crate) created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) keep_until: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) processes: Option<ProcessRecord>,
}

impl Marker {
    pub(crate) const SCHEMA: &'static str = "crownest.process-sandbox/v1";

    /// Reads the marker of `dir`.
    pub(crate) fn read(dir: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(dir.join(MARKER))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    /// Writes the marker of `dir` atomically (temp file + rename).
    pub(crate) fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!(".{MARKER}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(MARKER))
    }

    /// True when `sweep_orphans` may destroy this sandbox: its run is not live and its
    /// owner is gone, or it was kept and its time is up. A sandbox whose owner lives and
    /// that is not kept-and-expired is never touched (other engines may share the root).
    pub(crate) fn is_orphan(&self, live: &[String], now: Timestamp) -> bool {
        if let Some(until) = self.keep_until {
            return until <= now;
        }
        !live.contains(&self.run_id) && !self.owner.is_alive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn marker(owner: RunOwner, keep_until: Option<Timestamp>) -> Marker {
        Marker {
            schema: Marker::SCHEMA.into(),
            run_id: "run_x".into(),
            instance: "eng".into(),
            owner,
            created: Timestamp::now(),
            keep_until,
            processes: None,
        }
    }

    #[test]
    fn orphan_rules() {
        let now = Timestamp::now();
        let dead = RunOwner {
            instance: "gone".into(),
            pid: 4_194_305,
            pid_start: Some(1),
        };
        let me = RunOwner::current("eng");
        assert!(marker(dead.clone(), None).is_orphan(&[], now));
        assert!(!marker(dead.clone(), None).is_orphan(&["run_x".into()], now));
        assert!(
            !marker(me.clone(), None).is_orphan(&[], now),
            "live owner is never swept"
        );
        assert!(
            !marker(dead, Some(now.plus_millis(60_000))).is_orphan(&[], now),
            "kept"
        );
        assert!(
            marker(me, Some(now)).is_orphan(&[], now.plus_millis(1)),
            "kept and expired"
        );
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let m = marker(RunOwner::current("eng"), Some(Timestamp::now()));
        m.write(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), m);
    }
}
