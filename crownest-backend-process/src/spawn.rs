//! What runs between `fork` and `exec`: rlimits, the cwd, the parent-death signal, joining a
//! cgroup, for namespace containment a tiny init, and last, right before exec, closing the
//! inherited descriptors and dropping privilege (`crate::privilege`).
//!
//! Everything the child needs is computed before the fork ([`ChildHook::new`]); the hook
//! itself only makes async-signal-safe system calls and never allocates, because the parent
//! is multi-threaded and the child may inherit a heap lock held by another thread.
//!
//! # The namespace init
//!
//! `unshare(CLONE_NEWPID)` only affects the caller's *future* children, so the forked child
//! (C, the process tokio waits for) unshares and forks again:
//!
//! ```text
//! backend ── C (host pid ns: relays signals, waits for G)
//!             └─ G = PID 1 of the new namespace (blocks signals, forwards TERM/INT/HUP/... to
//!                  │   every process of the namespace, reaps orphans)
//!                  └─ H = PID 2: returns from the hook and execs the command
//! ```
//!
//! When H exits, G reports H's wait status through the report pipe and exits; the kernel
//! then kills every process left in the namespace and G's exit completes only once they
//! are all gone, so C (which waits for G) exits only when nothing of the command survives.
//! Killing G (SIGKILL through a pidfd) has the same effect. G and C have
//! `PR_SET_PDEATHSIG(SIGKILL)`: if the backend process dies, the whole tree dies with it.
//!
//! The extra processes use raw `clone(SIGCHLD)` (a fork without `atfork` handlers). C and G
//! close every descriptor they do not need (the stdout/stderr pipes, std's exec-error pipe)
//! so the parent sees EOF as soon as the command's processes are gone. G keeps its
//! capabilities: a command without any cannot `ptrace` it, read its descriptors through
//! `/proc/1/fd` or forge its report.
//!
//! # Before exec
//!
//! The command's process (H, or the forked child itself without a namespace) marks every
//! descriptor from 3 up close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, else a walk
//! of `/proc/self/fd`): whatever the host process left without `O_CLOEXEC` (its own files,
//! sockets, another thread's half-made pipe) is closed by the exec, while std's exec-error
//! pipe still reports a failed exec. Then it drops its privilege over the host
//! ([`HostPrivilege::drop_in_child`]). Both failures fail the spawn.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use crate::descriptors::{cloexec_from, close_all_except};
use crate::privilege::HostPrivilege;
use crate::report::{TAG_COMMAND_STATUS, TAG_INIT_PID, TAG_INIT_STATUS, report};

/// The kind of containment the hook sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookMode {
    /// PID namespace (optionally owned by a new user namespace, optionally with a new
    /// network namespace).
    Namespace { user: bool, network: bool },
    /// Join the cgroup whose `cgroup.procs` is given.
    Cgroup,
    /// Nothing beyond the process group (set by the `Command`).
    ProcessGroup,
}

/// Everything the child needs, computed before the fork.
#[derive(Debug)]
pub(crate) struct ChildHook {
    mode: HookMode,
    parent_pid: libc::pid_t,
    cwd_fd: RawFd,
    report_fd: RawFd,
    nofile: Option<libc::rlimit>,
    fsize: Option<libc::rlimit>,
    cgroup_procs: Option<CString>,
    setgroups_path: CString,
    uid_map_path: CString,
    gid_map_path: CString,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    privilege: HostPrivilege,
    probe: bool,
}

/// Resource limits to apply.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RlimitPlan {
    /// RLIMIT_NOFILE (soft and hard; clamped to the current hard limit).
    pub(crate) open_files: Option<u64>,
    /// RLIMIT_FSIZE in bytes.
    pub(crate) file_size: Option<u64>,
}

fn cstring(s: &str) -> CString {
    // The paths below are constants without NUL.
    CString::new(s).unwrap_or_default()
}

impl ChildHook {
    /// `cwd_fd`: an `O_PATH` directory fd to `fchdir` to (or -1). `report_fd`: the write end
    /// of the report pipe (namespace mode; or -1). `probe`: exit 0 instead of exec'ing
    /// (used to find out whether a containment works here).
    pub(crate) fn new(
        mode: HookMode,
        cwd_fd: RawFd,
        report_fd: RawFd,
        rlimits: RlimitPlan,
        cgroup_procs: Option<CString>,
        probe: bool,
    ) -> Self {
        let hard_nofile = current_hard(libc::RLIMIT_NOFILE);
        let nofile = rlimits.open_files.map(|n| {
            let n = clamp(n).min(hard_nofile);
            libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            }
        });
        let hard_fsize = current_hard(libc::RLIMIT_FSIZE);
        let fsize = rlimits.file_size.map(|n| {
            let n = clamp(n).min(hard_fsize);
            libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            }
        });
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let privilege =
            HostPrivilege::for_spawn(matches!(mode, HookMode::Namespace { user: true, .. }));
        Self {
            mode,
            // SAFETY: getpid has no preconditions.
            parent_pid: unsafe { libc::getpid() },
            cwd_fd,
            report_fd,
            nofile,
            fsize,
            cgroup_procs,
            setgroups_path: cstring("/proc/self/setgroups"),
            uid_map_path: cstring("/proc/self/uid_map"),
            gid_map_path: cstring("/proc/self/gid_map"),
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
            privilege,
            probe,
        }
    }

    /// What the command will hold over the host (decided in [`Self::new`], on the spawning
    /// thread).
    pub(crate) fn privilege(&self) -> HostPrivilege {
        self.privilege
    }

    /// The last step before exec, in the command's own process: only 0, 1 and 2 survive
    /// the exec, and no privilege does.
    unsafe fn prepare_exec(&self) -> io::Result<()> {
        // SAFETY: see `run`.
        unsafe {
            cloexec_from(3)?;
            self.privilege.drop_in_child()
        }
    }

    /// Runs in the forked child.
    ///
    /// # Safety
    ///
    /// Call only between fork and exec (from `Command::pre_exec`). Makes only
    /// async-signal-safe system calls and does not allocate.
    pub(crate) unsafe fn run(&self) -> io::Result<()> {
        // SAFETY (whole fn): plain system calls on values computed before the fork.
        unsafe {
            if self.cwd_fd >= 0 && libc::fchdir(self.cwd_fd) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(l) = &self.nofile
                && libc::setrlimit(libc::RLIMIT_NOFILE, l) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(l) = &self.fsize
                && libc::setrlimit(libc::RLIMIT_FSIZE, l) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Die with the backend process (checked against the race with its death).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent_pid {
                libc::_exit(125);
            }
            if let Some(procs) = &self.cgroup_procs {
                write_file(procs, b"0")?;
            }
            match self.mode {
                HookMode::Cgroup | HookMode::ProcessGroup => {
                    if self.probe {
                        libc::_exit(0);
                    }
                    self.prepare_exec()
                }
                HookMode::Namespace { user, network } => self.namespace(user, network),
            }
        }
    }

    /// C: unshare, fork the init, relay signals to it, wait for it.
    unsafe fn namespace(&self, user: bool, network: bool) -> io::Result<()> {
        // SAFETY (whole fn): see `run`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_BLOCK, &all, &mut old);
            let mut flags = libc::CLONE_NEWPID;
            if user {
                flags |= libc::CLONE_NEWUSER;
            }
            if network {
                flags |= libc::CLONE_NEWNET;
            }
            if libc::unshare(flags) != 0 {
                let e = io::Error::last_os_error();
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(e);
            }
            if user {
                // Identity mapping: the command sees its real uid/gid. Unprivileged writers
                // must deny setgroups before writing gid_map.
                let _ = write_file(&self.setgroups_path, b"deny");
                write_file(&self.uid_map_path, &self.uid_map)?;
                write_file(&self.gid_map_path, &self.gid_map)?;
            }
            // The init checks this pipe right after setting its parent-death signal: EOF
            // means C already died (the race PR_SET_PDEATHSIG alone leaves open).
            let mut alive = [-1 as libc::c_int; 2];
            if libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            let init = raw_fork();
            if init < 0 {
                return Err(io::Error::last_os_error());
            }
            if init == 0 {
                return self.init(alive, &all, &old);
            }
            libc::close(alive[0]);
            report(self.report_fd, TAG_INIT_PID, init);
            close_all_except([alive[1], self.report_fd]);
            loop {
                let sig = libc::sigwaitinfo(&all, std::ptr::null_mut());
                if sig == libc::SIGCHLD || sig < 0 {
                    let mut status = 0;
                    let r = libc::waitpid(init, &mut status, libc::WNOHANG);
                    if r == init {
                        report(self.report_fd, TAG_INIT_STATUS, status);
                        libc::_exit(exit_code_of(status));
                    }
                    if r < 0 && *libc::__errno_location() == libc::ECHILD {
                        libc::_exit(126);
                    }
                } else if forwarded(sig) {
                    libc::kill(init, sig);
                }
            }
        }
    }

    /// G: PID 1 of the new namespace.
    unsafe fn init(
        &self,
        alive: [libc::c_int; 2],
        all: &libc::sigset_t,
        old: &libc::sigset_t,
    ) -> io::Result<()> {
        // SAFETY (whole fn): see `run`.
        unsafe {
            libc::close(alive[1]);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            let mut pfd = libc::pollfd {
                fd: alive[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) != 0 {
                libc::_exit(125);
            }
            libc::close(alive[0]);
            let command = raw_fork();
            if command < 0 {
                libc::_exit(126);
            }
            if command == 0 {
                // H: restore the signal mask and go on to exec the command.
                libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
                if self.probe {
                    libc::_exit(0);
                }
                return self.prepare_exec();
            }
            close_all_except([self.report_fd, -1]);
            loop {
                let mut main = None;
                loop {
                    let mut status = 0;
                    let r = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if r <= 0 {
                        break;
                    }
                    if r == command {
                        main = Some(status);
                    }
                }
                if let Some(status) = main {
                    report(self.report_fd, TAG_COMMAND_STATUS, status);
                    // Exiting kills everything left in the namespace.
                    libc::_exit(exit_code_of(status));
                }
                let sig = libc::sigwaitinfo(all, std::ptr::null_mut());
                if sig > 0 && forwarded(sig) {
                    // -1 from PID 1: every process of this namespace but the init.
                    libc::kill(-1, sig);
                }
            }
        }
    }
}

fn clamp(n: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(n).unwrap_or(libc::RLIM_INFINITY)
}

fn current_hard(resource: libc::__rlimit_resource_t) -> libc::rlim_t {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local.
    if unsafe { libc::getrlimit(resource, &mut l) } == 0 {
        l.rlim_max
    } else {
        libc::RLIM_INFINITY
    }
}

/// Signals the init forwards to the command's processes.
fn forwarded(sig: libc::c_int) -> bool {
    matches!(
        sig,
        libc::SIGTERM
            | libc::SIGINT
            | libc::SIGHUP
            | libc::SIGQUIT
            | libc::SIGUSR1
            | libc::SIGUSR2
            | libc::SIGCONT
    )
}

fn exit_code_of(status: libc::c_int) -> libc::c_int {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// `fork()` without `atfork` handlers.
unsafe fn raw_fork() -> libc::pid_t {
    // SAFETY: clone(SIGCHLD) with no stack is fork(2); the child continues on a copy of
    // this stack. s390x takes (stack, flags), every other Linux target (flags, stack, ...).
    unsafe {
        #[cfg(target_arch = "s390x")]
        let r = libc::syscall(
            libc::SYS_clone,
            0 as libc::c_long,
            libc::SIGCHLD as libc::c_long,
            0,
            0,
            0,
        );
        #[cfg(not(target_arch = "s390x"))]
        let r = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_long,
            0 as libc::c_long,
            0,
            0,
            0,
        );
        r as libc::pid_t
    }
}

unsafe fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY: NUL-terminated path, valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err(err);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_codes_mirror_wait_statuses() {
        assert_eq!(exit_code_of(7 << 8), 7);
        assert_eq!(exit_code_of(libc::SIGKILL), 128 + 9);
    }
}
