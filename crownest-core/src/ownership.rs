//! Ownership: who drives a run or holds a sandbox, whether that owner is still there, and
//! the one orphan rule every reclaiming caller applies.
//!
//! * [`RunOwner`]: the owner record stored in run records, sandbox markers, `.creating-`
//!   names and Docker labels (engine instance, pid, process start time).
//! * [`parse_stat`] / [`read_stat`]: the one `/proc/<pid>/stat` parser (pure, on text) and
//!   the read beside it. The process backend's process-table scans use it too.
//! * [`Liveness`] and [`OwnerCheck`]: what an owner check answers, and who answers it.
//!   [`HostProcesses`] answers from this host's process table (pid + start time; a zombie
//!   is gone). A lease-based owner (an instance holding a lease with an expiry in a shared
//!   store, `docs/scale-out.md`) plugs in as another [`OwnerCheck`]: it answers
//!   [`Liveness::Alive`] while the lease is held, [`Liveness::Gone`] once it expired, and
//!   [`Liveness::Unknown`] when the store cannot tell; the orphan rule does not change.
//! * [`is_orphan`]: the one decision, pure and property-tested. Its callers: engine
//!   recovery (`engine/recovery.rs`), the host-directory sweep (`hostdir/sweep.rs`: sandbox
//!   markers and `.creating-` directories), the Docker backend's sweep, and the
//!   `FakeBackend`.

use serde::{Deserialize, Serialize};

use crate::ids::RunId;
use crate::time::Timestamp;

/// Who drives a run or holds a sandbox: recovery and the sweeps reclaim only what an owner
/// no longer holds.
///
/// Stored as JSON in run records and sandbox markers (`{"instance","pid","pidStart"?}`);
/// any field added later must have a serde default, so records written before still parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunOwner {
    /// The engine instance (random per `WorkspaceRuns`).
    pub instance: String,
    /// Host process id.
    pub pid: u32,
    /// Process start time (clock ticks since boot, from `/proc/<pid>/stat`), so a reused
    /// pid is not mistaken for the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

impl RunOwner {
    /// The owner record of this process for the given engine instance.
    pub fn current(instance: &str) -> Self {
        let pid = std::process::id();
        Self {
            instance: instance.to_owned(),
            pid,
            pid_start: process_start_ticks(pid),
        }
    }

    /// Whether the owner is still there, by this host's process table ([`HostProcesses`]).
    pub fn liveness(&self) -> Liveness {
        HostProcesses.liveness(self)
    }

    /// True when the owning process still exists, is not a zombie, and has the recorded
    /// start time.
    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }
}

/// What an owner check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// The owner holds what it owns: never reclaimed (unless a keep deadline passed).
    Alive,
    /// The owner is gone for good (its process exited or became a zombie, its pid was
    /// reused, its lease expired).
    Gone,
    /// The check cannot tell (e.g. a shared store is unreachable): treated as alive, so
    /// nothing is reclaimed on a guess.
    Unknown,
}

impl Liveness {
    /// `Alive` for true, `Gone` for false.
    pub fn from_alive(alive: bool) -> Self {
        if alive { Self::Alive } else { Self::Gone }
    }
}

/// A source of [`Liveness`] for owner records. Object-safe, so a host can hand the engine
/// another one (a lease table in a shared store) without changing the orphan rule.
pub trait OwnerCheck: Send + Sync + std::fmt::Debug {
    /// Whether `owner` is still there.
    fn liveness(&self, owner: &RunOwner) -> Liveness;
}

/// Liveness from this host's process table: alive when `/proc/<pid>/stat` exists, the
/// process is neither a zombie nor dead, and its start time is the recorded one (when one
/// was recorded). Anything else, an unreadable `/proc` included, is [`Liveness::Gone`]
/// (the owner was a process of this host; if the host cannot see it, it is not running).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostProcesses;

impl OwnerCheck for HostProcesses {
    fn liveness(&self, owner: &RunOwner) -> Liveness {
        let Ok(pid) = i32::try_from(owner.pid) else {
            return Liveness::Gone;
        };
        Liveness::from_alive(
            read_stat(pid)
                .is_some_and(|s| s.is_running() && owner.pid_start.is_none_or(|t| t == s.start)),
        )
    }
}

/// The one orphan rule. True when whatever `owner` holds for `run` may be reclaimed now:
///
/// * kept until `keep_until`: only once that time is up (`keep_until <= now`), whoever
///   the owner is;
/// * otherwise: only when the owner is [`Liveness::Gone`] **and** the run is not in `live`
///   (runs this engine, or another, still drives). An owner that is alive or unknown is
///   never reclaimed (other engines may share the store or the work root).
///
/// `run` is `None` when what is held names no run (a `.creating-` directory whose name
/// does not parse further); then only the owner decides.
pub fn is_orphan(
    owner: Liveness,
    run: Option<&str>,
    keep_until: Option<Timestamp>,
    live: &[RunId],
    now: Timestamp,
) -> bool {
    if let Some(until) = keep_until {
        return until <= now;
    }
    let run_live = run.is_some_and(|r| live.iter().any(|l| l.as_str() == r));
    owner == Liveness::Gone && !run_live
}

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The pid.
    pub pid: i32,
    /// The command name (between the first `(` and the last `)`; may hold spaces and
    /// parentheses).
    pub comm: String,
    /// The state letter (`R`, `S`, `D`, `Z`, `X`, ...).
    pub state: char,
    /// The parent pid.
    pub ppid: i32,
    /// The process group.
    pub pgid: i32,
    /// The session.
    pub sid: i32,
    /// Start time in clock ticks since boot (field 22).
    pub start: u64,
}

impl ProcStat {
    /// False for a zombie (`Z`) or a dead (`X`) process: it runs nothing and owns nothing.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the content of `/proc/<pid>/stat`. The comm field may contain spaces and
/// parentheses, so the fields after it are split after the last `)`.
pub fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut f = text.get(close + 1..)?.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    // Fields 8..=21 come next; starttime is field 22 (15 further on).
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

/// The stat of one process, `None` when it does not exist (or `/proc` cannot be read).
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat` field 22), as
/// recorded in [`RunOwner::pid_start`].
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    read_stat(i32::try_from(pid).ok()?).map(|s| s.start)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINE: &str =
        "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let s = parse_stat(4242, LINE).unwrap();
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(
            (s.state, s.ppid, s.pgid, s.sid, s.start),
            ('S', 1, 4242, 4242, 987654)
        );
        assert!(s.is_running());
        let odd = "7 (a) b) Z) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        let s = parse_stat(7, odd).unwrap();
        assert_eq!((s.comm.as_str(), s.state, s.start), ("a) b) Z", 'R', 55));
    }

    #[test]
    fn a_zombie_or_dead_process_is_not_running() {
        for state in ['Z', 'X'] {
            let line = LINE.replacen(") S ", &format!(") {state} "), 1);
            let s = parse_stat(4242, &line).unwrap();
            assert_eq!(s.state, state);
            assert!(!s.is_running(), "{state} must not count as alive");
        }
        assert!(parse_stat(1, "1 (truncated").is_none());
        assert!(parse_stat(1, "1 (x) S 1 2").is_none());
    }

    #[test]
    fn a_zombie_owner_is_gone() {
        // A real zombie: a child that exited and is not reaped yet.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stat = loop {
            let s = read_stat(pid as i32).unwrap();
            if s.state == 'Z' || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(stat.state, 'Z');
        let owner = RunOwner {
            instance: "zombie".into(),
            pid,
            pid_start: Some(stat.start),
        };
        assert_eq!(owner.liveness(), Liveness::Gone);
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn own_process_is_alive_and_a_reused_pid_is_not() {
        let me = RunOwner::current("t");
        assert_eq!(me.liveness(), Liveness::Alive);
        let reused = RunOwner {
            pid_start: me.pid_start.map(|s| s + 1),
            ..me.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Gone);
        let json = r#"{"instance":"eng_1","pid":12}"#;
        let old: RunOwner = serde_json::from_str(json).unwrap();
        assert_eq!(old.pid_start, None);
        assert_eq!(serde_json::to_string(&old).unwrap(), json);
    }

    fn liveness() -> impl Strategy<Value = Liveness> {
        prop_oneof![
            Just(Liveness::Alive),
            Just(Liveness::Gone),
            Just(Liveness::Unknown)
        ]
    }

    proptest! {
        #[test]
        fn the_orphan_rule(
            owner in liveness(),
            run_index in proptest::option::of(0usize..4),
            live_count in 0usize..4,
            keep in proptest::option::of(-5_000i64..5_000),
            now_ms in 1_000_000i64..2_000_000,
        ) {
            let runs: Vec<RunId> = (0..4).map(|_| RunId::new()).collect();
            let live = &runs[..live_count];
            let run = run_index.map(|i| runs[i].as_str());
            let now = Timestamp::from_millis(now_ms);
            let keep_until = keep.map(|d| Timestamp::from_millis(now_ms + d));
            let orphan = is_orphan(owner, run, keep_until, live, now);
            let run_live = run_index.is_some_and(|i| i < live_count);
            match keep_until {
                // Kept: the deadline alone decides.
                Some(until) => prop_assert_eq!(orphan, until <= now),
                None => {
                    // Never reclaimed from an owner that is alive or unknown.
                    if owner != Liveness::Gone {
                        prop_assert!(!orphan);
                    }
                    // Never reclaimed while its run is live.
                    if run_live {
                        prop_assert!(!orphan);
                    }
                    // Reclaimed exactly when both are false.
                    prop_assert_eq!(orphan, owner == Liveness::Gone && !run_live);
                }
            }
            // Time only makes a kept claim orphaned, never the reverse.
            if orphan && keep_until.is_some() {
                let later = Timestamp::from_millis(now_ms + 1);
                prop_assert!(is_orphan(owner, run, keep_until, live, later));
            }
        }
    }
}
