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
//! C is `clone(CLONE_VM)` of the host, sharing its memory, where no user namespace is made
//! (`crate::leader`, which says what that requires), and std's fork of the host elsewhere.
//! G and H are not forks either: G is `clone(CLONE_VM)`, which shares C's memory, and H is
//! `clone(CLONE_VM | CLONE_VFORK)` from G, which suspends G until H has exec'd, as
//! `posix_spawn` does. Each runs on its own stack ([`Stacks`], mapped by the host before
//! the spawn); none copies page tables or
//! takes copy-on-write faults, which made G's and H's forks two of the spawn's costliest
//! steps. What that sharing allows is little, and kept so: C, G and H each have their own
//! descriptor table, signal handlers and mask; the memory they share is read-only to them
//! but for their stacks and `errno` (one thread-local slot, as they share the thread
//! pointer: C reads it only once G is gone, G never reads it, and H reads it only while G is
//! suspended and C, its descriptors closed by one `close_range`, waits in `sigwaitinfo`;
//! where `close_range` is missing, C's fallback `close`s may race H's read, and a failed
//! exec may then be reported with another `errno`: the spawn fails either way). H execs
//! the command itself, with the argument and environment vectors built before the fork
//! ([`ExecImage`]); a failure to exec (or to drop privilege before) is reported through the
//! report pipe, and the backend fails the spawn with it as std would have. C and G close
//! every descriptor they do not need (the stdout/stderr pipes, std's exec-error pipe) so the
//! parent sees EOF as soon as the command's processes are gone. G keeps its capabilities: a
//! command without any cannot `ptrace` it, read its memory (where C shares the host's, the
//! host's own) or its descriptors through `/proc/1/mem` and `/proc/1/fd`, or forge its
//! report; the same check (`ptrace_may_access`: a target whose permitted capabilities are
//! not a subset of the caller's) guards C and the host process itself.
//!
//! # Before exec
//!
//! The command's process (H, or the forked child itself without a namespace) marks every
//! descriptor from 3 up close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, else a walk
//! of `/proc/self/fd`): whatever the host process left without `O_CLOEXEC` (its own files,
//! sockets, another thread's half-made pipe) is closed by the exec, while std's exec-error
//! pipe still reports a failed exec. Then it drops its privilege over the host
//! ([`HostPrivilege::drop_in_child`]). Both failures fail the spawn.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use crate::descriptors::{cloexec_from, close_all_except};
use crate::privilege::HostPrivilege;
use crate::report::{TAG_COMMAND_STATUS, TAG_EXEC_ERROR, TAG_INIT_PID, TAG_INIT_STATUS, report};

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

impl HookMode {
    /// Whether the child joins a spare network namespace (`crate::netns`) instead of
    /// making one: a PID namespace with a new network namespace and no user namespace (a
    /// namespace made by the backend is owned by the host's user namespace).
    pub(crate) fn joins_spare_netns(self) -> bool {
        self == Self::Namespace {
            user: false,
            network: true,
        }
    }
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
    /// What H execs (namespace mode; elsewhere std's own exec runs the command).
    exec: Option<ExecImage>,
    /// A fresh network namespace to join instead of making one (`crate::netns`), or -1.
    netns_fd: RawFd,
    /// The stacks of C (when C shares the host's memory, `crate::leader`), G and H, mapped
    /// here before the fork (namespace mode).
    stacks: Option<Stacks>,
    /// Held open by G for its whole life (and by H until its exec): EOF on the other end
    /// means nothing runs on the host's memory any more (`crate::leader`), or -1.
    gone_fd: RawFd,
}

/// One private mapping holding the stacks of C, G and H (`clone(CLONE_VM)`), made on the
/// spawning thread. Only the pages touched are ever allocated; unmapped when dropped, which
/// the owner does only once no process runs on them any more (after a fork: at once, the
/// child runs on its own copy).
#[derive(Debug)]
pub(crate) struct Stacks {
    base: std::ptr::NonNull<libc::c_void>,
}

// SAFETY: a plain anonymous mapping owned by this value; moving it between threads moves
// only the address.
unsafe impl Send for Stacks {}
// SAFETY: as above; `&Stacks` only hands out addresses.
unsafe impl Sync for Stacks {}

/// Which stack of [`Stacks`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum StackOf {
    Leader = 0,
    Init = 1,
    Command = 2,
}

impl Stacks {
    const COUNT: usize = 3;

    fn map() -> Option<Self> {
        // SAFETY: a fresh private anonymous mapping, owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CLONE_STACK * Self::COUNT,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::NonNull::new(p).map(|base| Self { base })
    }

    /// The top of one stack (stacks grow down).
    pub(crate) fn top(&self, which: StackOf) -> *mut libc::c_void {
        // SAFETY: within the mapping (its end at most).
        unsafe {
            self.base
                .as_ptr()
                .cast::<u8>()
                .add(CLONE_STACK * (which as usize + 1))
                .cast()
        }
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; its owner drops it only when no process runs
        // on it (see the type's docs).
        unsafe {
            libc::munmap(self.base.as_ptr(), CLONE_STACK * Self::COUNT);
        }
    }
}

/// A program, its argument vector and its environment, as `execve` takes them, built
/// before the fork (the child must not allocate).
#[derive(Debug)]
pub(crate) struct ExecImage {
    program: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    /// NULL-terminated pointers into `_argv`, `_envp` (their heap buffers do not move when
    /// the image does).
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh program argv[1..]`: what a file without a `#!` line (`ENOEXEC`) runs as,
    /// as std's `execvp` does (glibc's fallback).
    shell: CString,
    shell_argv_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the image's own `CString`s, which it owns and never
// changes; sharing or moving the image between threads moves no pointed-to buffer.
unsafe impl Send for ExecImage {}
// SAFETY: as above; nothing is mutated through `&ExecImage`.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    /// `program` (a path) run with `argv` (`argv[0]` included) and exactly `env`; `None`
    /// when one of them holds a NUL byte (std refuses those the same way).
    pub(crate) fn new(
        program: &std::path::Path,
        argv: &[String],
        env: &BTreeMap<String, String>,
    ) -> Option<Self> {
        let program = CString::new(program.as_os_str().as_encoded_bytes()).ok()?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .ok()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<_, _>>()
            .ok()?;
        let terminated = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let shell = cstring("/bin/sh");
        let shell_argv_ptrs = [shell.as_ptr(), program.as_ptr()]
            .into_iter()
            .chain(argv.iter().skip(1).map(|c| c.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Some(Self {
            argv_ptrs: terminated(&argv),
            envp_ptrs: terminated(&envp),
            shell,
            shell_argv_ptrs,
            program,
            _argv: argv,
            _envp: envp,
        })
    }
}

/// The size of each stack of [`Stacks`].
pub(crate) const CLONE_STACK: usize = 256 * 1024;

/// What G starts with (on C's stack, which outlives G: C never returns).
struct InitStart<'a> {
    hook: &'a ChildHook,
    alive: [libc::c_int; 2],
    all: libc::sigset_t,
    old: libc::sigset_t,
}

/// What H starts with (on G's stack; G is suspended until H exec'd or exited).
struct CommandStart<'a> {
    hook: &'a ChildHook,
    old: libc::sigset_t,
}

extern "C" fn init_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `InitStart` C passed to `clone_vm`, alive until C exits.
    unsafe {
        let start = &*arg.cast::<InitStart<'_>>();
        start.hook.init(start.alive, &start.all, &start.old)
    }
}

extern "C" fn command_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `CommandStart` G passed to `clone_vm`; G is suspended (vfork).
    unsafe {
        let start = &*arg.cast::<CommandStart<'_>>();
        start.hook.command(&start.old)
    }
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
        exec: Option<ExecImage>,
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
        let stacks = match mode {
            HookMode::Namespace { .. } => Stacks::map(),
            _ => None,
        };
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
            exec,
            netns_fd: -1,
            stacks,
            gone_fd: -1,
        }
    }

    /// Marks `fd` as the descriptor G holds for its whole life (see the field).
    pub(crate) fn with_gone(mut self, fd: RawFd) -> Self {
        self.gone_fd = fd;
        self
    }

    /// The stacks (namespace mode), or `None` where they could not be mapped.
    pub(crate) fn stacks(&self) -> Option<&Stacks> {
        self.stacks.as_ref()
    }

    /// The descriptor the report records go to (or -1).
    pub(crate) fn report_fd(&self) -> RawFd {
        self.report_fd
    }

    /// Joins `fd`, a network namespace nothing else uses (`crate::netns`), instead of
    /// making one: only for `Namespace { user: false, network: true }` (ignored otherwise).
    /// The descriptor must stay open until the spawn returned.
    pub(crate) fn with_netns(mut self, fd: RawFd) -> Self {
        if self.mode.joins_spare_netns() {
            self.netns_fd = fd;
        }
        self
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
            default_dispositions();
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
            libc::sigfillset(&mut all);
            // What H execs the command with: nothing blocked (std's child, a forked C,
            // starts so; a C sharing the host's memory starts with everything blocked).
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut old);
            libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            let mut flags = libc::CLONE_NEWPID;
            if user {
                flags |= libc::CLONE_NEWUSER;
            }
            // The spare network namespace when there is one; one made here when there is
            // not, or when joining it failed.
            if network
                && !(self.netns_fd >= 0 && libc::setns(self.netns_fd, libc::CLONE_NEWNET) == 0)
            {
                flags |= libc::CLONE_NEWNET;
            }
            if self.netns_fd >= 0 {
                libc::close(self.netns_fd);
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
            let start = InitStart {
                hook: self,
                alive,
                all,
                old,
            };
            let Some(stacks) = &self.stacks else {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            };
            let init = clone_vm(
                init_entry,
                (&raw const start).cast_mut().cast(),
                false,
                stacks.top(StackOf::Init),
            );
            if init < 0 {
                return Err(io::Error::last_os_error());
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

    /// G: PID 1 of the new namespace. Never returns.
    unsafe fn init(
        &self,
        alive: [libc::c_int; 2],
        all: &libc::sigset_t,
        old: &libc::sigset_t,
    ) -> libc::c_int {
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
            let start = CommandStart {
                hook: self,
                old: *old,
            };
            // Returns once H exec'd or exited (CLONE_VFORK). The stacks exist: C checked.
            let Some(stacks) = &self.stacks else {
                libc::_exit(126);
            };
            let command = clone_vm(
                command_entry,
                (&raw const start).cast_mut().cast(),
                true,
                stacks.top(StackOf::Command),
            );
            if command < 0 {
                libc::_exit(126);
            }
            close_all_except([self.report_fd, self.gone_fd]);
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

    /// H: restores the signal mask, prepares and execs the command. Never returns: a
    /// failure is reported (`TAG_EXEC_ERROR`) and H exits 127.
    unsafe fn command(&self, old: &libc::sigset_t) -> libc::c_int {
        // SAFETY (whole fn): see `run`.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
            if self.probe {
                libc::_exit(0);
            }
            let errno = match (self.prepare_exec(), &self.exec) {
                (Err(e), _) => e.raw_os_error().unwrap_or(libc::EINVAL),
                (Ok(()), None) => libc::ENOEXEC,
                (Ok(()), Some(image)) => {
                    libc::execve(
                        image.program.as_ptr(),
                        image.argv_ptrs.as_ptr(),
                        image.envp_ptrs.as_ptr(),
                    );
                    let mut errno = *libc::__errno_location();
                    if errno == libc::ENOEXEC {
                        libc::execve(
                            image.shell.as_ptr(),
                            image.shell_argv_ptrs.as_ptr(),
                            image.envp_ptrs.as_ptr(),
                        );
                        errno = *libc::__errno_location();
                    }
                    errno
                }
            };
            report(self.report_fd, TAG_EXEC_ERROR, errno);
            libc::_exit(127)
        }
    }
}

/// Sets every signal's disposition back to the default (handled and ignored ones alike), so
/// the command starts with none of the host's: std's child resets only `SIGPIPE`, and an
/// ignored signal survives `execve`. The raw system call, because glibc's `sigaction`
/// refuses its two internal signals (32, 33), which a host may have ignored all the same.
unsafe fn default_dispositions() {
    // A zeroed kernel `sigaction` (handler, flags, restorer, mask on every layout) is
    // `SIG_DFL` without flags.
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction(2) with a valid, zeroed action and no old action.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
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

/// A child sharing this process's memory (`CLONE_VM`; with `vfork`, this thread waits until
/// it exec'd or exited), starting in `entry(arg)` on the stack whose top is `stack` (one of
/// [`Stacks`]). -1 on failure.
pub(crate) unsafe fn clone_vm(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    vfork: bool,
    stack: *mut libc::c_void,
) -> libc::pid_t {
    // SAFETY: `stack` is the top of a mapping that outlives the child; glibc's clone()
    // runs `entry` on it and `_exit`s with its result.
    unsafe {
        let mut flags = libc::CLONE_VM | libc::SIGCHLD;
        if vfork {
            flags |= libc::CLONE_VFORK;
        }
        libc::clone(entry, stack, flags, arg)
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
