//! Reading `/proc`: process identity (pid + start time, so a reused pid is never mistaken
//! for a process of ours) and the process table for descendant scans.

use std::collections::{BTreeMap, BTreeSet};

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgid: i32,
    pub(crate) sid: i32,
    pub(crate) start: u64,
}

/// Parses `/proc/<pid>/stat` content.
pub(crate) fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut f = text.get(close + 1..)?.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    // Fields 7..=21 of stat; starttime is field 22 (index 19 after the comm).
    let start = f.nth(15)?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgid,
        sid,
        start,
    })
}

/// The stat of one process, `None` when it does not exist.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// True when `pid` is alive (not a zombie) with start time `start`.
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && s.state != 'Z' && s.state != 'X')
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
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .map(|p| (p.pid, p))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(
            (s.state, s.ppid, s.pgid, s.sid, s.start),
            ('S', 1, 4242, 4242, 987654)
        );
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(alive(me, s.start));
        assert!(!alive(me, s.start + 1));
    }
}
