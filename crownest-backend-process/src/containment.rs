//! Which containment applies here ([`probe`]), and the handle on one running command's
//! processes ([`Tree`]): signal them, kill them, confirm they are gone.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crownest_core::KillSignal;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup};
use crate::config::{Containment, ProcessConfig};
use crate::procfs;
use crate::spawn::{ChildHook, HookMode, RlimitPlan};

/// The containment this backend applies (decided once, by [`probe`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Applied {
    /// PID namespace with a tiny init; `user` = owned by a new user namespace; `network` =
    /// `network: none` runs also get a new network namespace.
    PidNamespace { user: bool, network: bool },
    /// A cgroup v2 per exec under `parent`.
    Cgroup { parent: PathBuf },
    /// The process group plus a descendant scan.
    ProcessGroup,
}

impl Applied {
    /// The `processContainment` value of the isolation report.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::PidNamespace { .. } => "pid_namespace",
            Self::Cgroup { .. } => "cgroup",
            Self::ProcessGroup => "process_group",
        }
    }

    /// The typed `processContainment` of the isolation report.
    pub(crate) fn containment(&self) -> crownest_core::ProcessContainment {
        match self {
            Self::PidNamespace { .. } => crownest_core::ProcessContainment::PidNamespace,
            Self::Cgroup { .. } => crownest_core::ProcessContainment::Cgroup,
            Self::ProcessGroup => crownest_core::ProcessContainment::ProcessGroup,
        }
    }

    /// True when every process the command started is killed, wherever it went.
    pub(crate) fn kills_whole_tree(&self) -> bool {
        !matches!(self, Self::ProcessGroup)
    }
}

/// The outcome of probing: what applies, and why stronger options did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Probe {
    pub(crate) applied: Applied,
    pub(crate) notes: Vec<String>,
}

fn try_hook(mode: HookMode, cgroup_procs: Option<std::ffi::CString>) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let hook = ChildHook::new(
        mode,
        -1,
        -1,
        RlimitPlan::default(),
        cgroup_procs,
        true,
        None,
    );
    let mut cmd = std::process::Command::new("true");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    // SAFETY: the hook only makes async-signal-safe calls on pre-computed data.
    unsafe {
        cmd.pre_exec(move || hook.run());
    }
    let status = cmd.spawn()?.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "probe child ended with {status}"
        )))
    }
}

fn probe_namespace(user: bool, want_network: bool, notes: &mut Vec<String>) -> Option<Applied> {
    let label = if user {
        "user+pid namespace"
    } else {
        "pid namespace"
    };
    if want_network {
        match try_hook(
            HookMode::Namespace {
                user,
                network: true,
            },
            None,
        ) {
            Ok(()) => {
                return Some(Applied::PidNamespace {
                    user,
                    network: true,
                });
            }
            Err(e) => notes.push(format!("{label} with a network namespace: {e}")),
        }
    }
    match try_hook(
        HookMode::Namespace {
            user,
            network: false,
        },
        None,
    ) {
        Ok(()) => Some(Applied::PidNamespace {
            user,
            network: false,
        }),
        Err(e) => {
            notes.push(format!("{label}: {e}"));
            None
        }
    }
}

fn probe_cgroup(config: &ProcessConfig, notes: &mut Vec<String>) -> Option<Applied> {
    let parents = cgroup::candidate_parents(config.cgroup_parent.as_deref());
    if parents.is_empty() {
        notes.push("cgroup: no cgroup v2 hierarchy is mounted".into());
    }
    for parent in parents {
        let name = format!("probe-{:016x}", rand::random::<u64>());
        let cg = match Cgroup::create(&parent, &name) {
            Ok(cg) => cg,
            Err(e) => {
                notes.push(format!("cgroup under {}: {e}", parent.display()));
                continue;
            }
        };
        let procs = std::ffi::CString::new(cg.procs_file().as_os_str().as_encoded_bytes()).ok();
        let result = try_hook(HookMode::Cgroup, procs);
        let _ = cg.remove();
        match result {
            Ok(()) => return Some(Applied::Cgroup { parent }),
            Err(e) => notes.push(format!("cgroup under {}: {e}", parent.display())),
        }
    }
    None
}

/// Finds the strongest containment that works here (or checks the configured one).
pub(crate) fn probe(config: &ProcessConfig) -> Result<Probe, String> {
    let mut notes = Vec::new();
    let net = config.isolate_network;
    let applied = match config.containment {
        Containment::Auto => probe_namespace(false, net, &mut notes)
            .or_else(|| probe_namespace(true, net, &mut notes))
            .or_else(|| probe_cgroup(config, &mut notes))
            .unwrap_or(Applied::ProcessGroup),
        Containment::PidNamespace => probe_namespace(false, net, &mut notes).ok_or_else(|| {
            format!(
                "pid namespace containment does not work here: {}",
                notes.join("; ")
            )
        })?,
        Containment::UserNamespace => probe_namespace(true, net, &mut notes).ok_or_else(|| {
            format!(
                "user namespace containment does not work here: {}",
                notes.join("; ")
            )
        })?,
        Containment::Cgroup => probe_cgroup(config, &mut notes).ok_or_else(|| {
            format!(
                "cgroup containment does not work here: {}",
                notes.join("; ")
            )
        })?,
        Containment::ProcessGroup => Applied::ProcessGroup,
    };
    Ok(Probe { applied, notes })
}

/// The init of a namespace-contained command, held through a pidfd (never a bare pid that
/// could be reused).
#[derive(Debug)]
pub(crate) struct Init {
    pub(crate) pid: i32,
    pub(crate) start: Option<u64>,
    fd: OwnedFd,
}

impl Init {
    /// Opens a pidfd on `pid` and checks it is the child of `leader`.
    pub(crate) fn open(pid: i32, leader: i32) -> Option<Self> {
        let fd = rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
        let st = procfs::stat(pid);
        if st.as_ref().is_some_and(|s| s.ppid != leader) {
            return None;
        }
        Some(Self {
            pid,
            start: st.map(|s| s.start),
            fd,
        })
    }

    /// True once the init has exited (and with it every process of the namespace).
    pub(crate) fn exited(&self) -> bool {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            // SAFETY: the fd is owned by self and lives through this call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd.as_raw_fd()) },
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    fn signal(&self, sig: Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.fd, sig);
    }
}

/// What a sandbox marker records about a running command, for `sweep_orphans` after a
/// host crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessRecord {
    pub(crate) containment: String,
    pub(crate) leader_pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) leader_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) init_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) init_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<PathBuf>,
}

impl ProcessRecord {
    /// Kills whatever of this record still runs (used by `sweep_orphans`).
    pub(crate) fn kill_leftovers(&self) {
        if let (Some(pid), Some(start)) = (self.init_pid, self.init_start)
            && procfs::alive(pid, start)
            && let Some(p) = Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
        if let Some(path) = &self.cgroup {
            let cg = Cgroup { path: path.clone() };
            let _ = cg.kill();
            let deadline = Instant::now() + Duration::from_secs(2);
            while !cg.empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = cg.remove();
        }
        if let Some(leader_start) = self.leader_start {
            // Members of the command's process group started after it.
            for p in procfs::all() {
                if p.pgid == self.leader_pid
                    && p.start >= leader_start
                    && let Some(pid) = Pid::from_raw(p.pid)
                {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

/// The processes of one running command.
#[derive(Debug)]
pub(crate) struct Tree {
    applied: Applied,
    /// The process tokio waits for (C in namespace mode, the command otherwise); it leads
    /// its own process group.
    leader: i32,
    leader_start: Option<u64>,
    reaped: AtomicBool,
    init: Option<Init>,
    cgroup: Option<Cgroup>,
    /// Process-group mode: every descendant seen, pid → (start time, name).
    tracked: Mutex<BTreeMap<i32, (u64, String)>>,
}

impl Tree {
    pub(crate) fn new(
        applied: Applied,
        leader: i32,
        init: Option<Init>,
        cgroup: Option<Cgroup>,
    ) -> Self {
        Self {
            applied,
            leader,
            leader_start: procfs::stat(leader).map(|s| s.start),
            reaped: AtomicBool::new(false),
            init,
            cgroup,
            tracked: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn record(&self) -> ProcessRecord {
        ProcessRecord {
            containment: self.applied.name().into(),
            leader_pid: self.leader,
            leader_start: self.leader_start,
            init_pid: self.init.as_ref().map(|i| i.pid),
            init_start: self.init.as_ref().and_then(|i| i.start),
            cgroup: self.cgroup.as_ref().map(|c| c.path.clone()),
        }
    }

    pub(crate) fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The leader was reaped: its pid may be reused from now on.
    pub(crate) fn set_reaped(&self) {
        self.reaped.store(true, Ordering::SeqCst);
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, (u64, String)>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Process-group mode: records the current descendants and group members.
    pub(crate) fn scan(&self) {
        if self.applied != Applied::ProcessGroup {
            return;
        }
        let found = procfs::tree_of(self.leader, self.leader);
        let mut t = self.tracked();
        for (pid, p) in found {
            t.entry(pid).or_insert((p.start, p.comm));
        }
    }

    fn signal_group(&self, sig: Signal) {
        if let Some(pgid) = Pid::from_raw(self.leader) {
            let _ = rustix::process::kill_process_group(pgid, sig);
        }
        for (&pid, (start, _)) in self.tracked().iter() {
            if procfs::alive(pid, *start)
                && let Some(p) = Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }

    fn kill_leader(&self, sig: Signal) {
        if !self.reaped.load(Ordering::SeqCst)
            && let Some(p) = Pid::from_raw(self.leader)
        {
            let _ = rustix::process::kill_process(p, sig);
        }
    }

    /// Signals every process of the command.
    pub(crate) fn signal(&self, signal: KillSignal) {
        let sig = match signal {
            KillSignal::Term => Signal::TERM,
            KillSignal::Kill => Signal::KILL,
        };
        match &self.applied {
            Applied::PidNamespace { .. } => match &self.init {
                // The init forwards TERM to the whole namespace; KILL on the init kills
                // the namespace.
                Some(init) => init.signal(sig),
                // No init handle: killing the relay takes the init with it (parent-death
                // signal), and the namespace with the init.
                None => self.kill_leader(sig),
            },
            Applied::Cgroup { .. } => match (&self.cgroup, signal) {
                (Some(cg), KillSignal::Kill) => {
                    let _ = cg.kill();
                }
                (Some(cg), KillSignal::Term) => cg.signal(sig),
                (None, _) => self.signal_group(sig),
            },
            Applied::ProcessGroup => {
                self.scan();
                self.signal_group(sig);
            }
        }
    }

    /// Processes of the command still alive, described for the report.
    fn alive(&self) -> Vec<String> {
        match &self.applied {
            Applied::PidNamespace { .. } => match &self.init {
                Some(init) if !init.exited() => {
                    vec![format!(
                        "pid {} (namespace init; its namespace is not empty)",
                        init.pid
                    )]
                }
                _ => Vec::new(),
            },
            Applied::Cgroup { .. } => match &self.cgroup {
                Some(cg) if !cg.empty() => cg
                    .pids()
                    .into_iter()
                    .map(|pid| describe(pid, procfs::stat(pid).map(|s| s.comm)))
                    .collect(),
                _ => Vec::new(),
            },
            Applied::ProcessGroup => {
                let mut out: BTreeMap<i32, String> = self
                    .tracked()
                    .iter()
                    .filter(|(pid, (start, _))| procfs::alive(**pid, *start))
                    .map(|(pid, (_, comm))| (*pid, describe(*pid, Some(comm.clone()))))
                    .collect();
                for p in procfs::all() {
                    if p.pgid == self.leader && p.state != 'Z' && p.state != 'X' {
                        out.entry(p.pid)
                            .or_insert_with(|| describe(p.pid, Some(p.comm.clone())));
                    }
                }
                out.into_values().collect()
            }
        }
    }

    /// After the leader exited (or to destroy): kills whatever is left and waits up to
    /// `timeout` for it to be gone. Returns the survivors (empty when all is gone).
    pub(crate) async fn finish(&self, timeout: Duration) -> Vec<String> {
        self.scan();
        let until = Instant::now() + timeout;
        loop {
            let alive = self.alive();
            if alive.is_empty() {
                return alive;
            }
            if Instant::now() >= until {
                return alive;
            }
            self.signal(KillSignal::Kill);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn describe(pid: i32, comm: Option<String>) -> String {
    match comm {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    }
}
