//! Reading `/proc`: process identity (pid + start time, so a reused pid is never mistaken
//! for a process of ours) and the process table for descendant scans. The stat parser is
//! core's one parser ([`crownest_core::ownership::parse_stat`]).

use std::collections::{BTreeMap, BTreeSet};

pub(crate) use crownest_core::ownership::ProcStat;

/// The stat of one process, `None` when it does not exist (the one parser:
/// [`crownest_core::ownership::parse_stat`]).
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    crownest_core::ownership::read_stat(pid)
}

/// True when `pid` is alive (not a zombie) with start time `start`.
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && s.is_running())
}

/// Every process on the host.
pub(crate) fn all() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(stat)
        .collect()
}

/// Processes descending from `root` (excluded) or in process group `pgid`, with their start
/// times, from one snapshot of the process table.
pub(crate) fn tree_of(root: i32, pgid: i32) -> BTreeMap<i32, ProcStat> {
    let procs = all();
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(c) {
                stack.push(c);
            }
        }
    }
    procs
        .into_iter()
        .filter(|p| p.pid != root && (seen.contains(&p.pid) || p.pgid == pgid))
        .filter(ProcStat::is_running)
        .map(|p| (p.pid, p))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(alive(me, s.start));
        assert!(!alive(me, s.start + 1));
    }
}
