//! The command's first process, C (`crate::spawn`), started without a fork of the host.
//!
//! std's spawn forks the whole host process: it copies the page tables of every private
//! mapping and write-protects the host's own pages, so that from then on each first write
//! of every host thread to one of them is a copy-on-write fault, and in a multi-threaded
//! host each such fault flushes the TLB of the other CPUs by interrupt. `perf record` of tiny
//! runs put that at ~1.5 ms of CPU per run (issue 16, `docs/benchmarks.md`, eleventh pass),
//! more than any other step. Where C needs no user namespace (which the kernel refuses to a
//! process sharing its memory), C is instead `clone(CLONE_VM)`: it shares the host's memory,
//! as G and H already share C's, and nothing is copied or write-protected.
//!
//! What that sharing requires, and how it is kept:
//!
//! * **No host code runs in C, G or H.** C is cloned by a thread of its own, the spawner,
//!   which blocks every signal for good, so C starts with every signal blocked; the hook
//!   sets every disposition back to the default in C's own copy of the handler table (C is
//!   cloned without `CLONE_SIGHAND`) before anything is unblocked (only H unblocks, right
//!   before its exec). G and H inherit that table. C, G and H never allocate and make only
//!   async-signal-safe calls (`crate::spawn`).
//! * **The thread-local `errno`.** C, G and H share the spawner thread's thread pointer, so
//!   a failed call in any of them writes the spawner's `errno`. The spawner only clones and
//!   replies; it reads `errno` only to describe a failed clone, and those processes read it
//!   only to report a failure, so a value overwritten by a neighbour can at worst name the
//!   wrong cause of a spawn that fails either way. No host thread but the spawner is ever
//!   touched.
//! * **The memory they run on lives until they are all gone.** The hook and the stacks of
//!   C, G and H ([`Stacks`](crate::spawn::Stacks)) are owned by the [`SharedLeader`] and
//!   freed only once C was reaped *and* the "gone" pipe, whose write end G holds for its
//!   whole life (and H until its exec), reports EOF: after a normal end that is at once (C
//!   exits only after G); after C was killed, a thread of its own waits for G's end first.
//! * **Nothing C may use is freed or closed under it.** The spawn hands the spawner
//!   everything C needs (the hook, the stacks, the descriptors C takes as 0, 1 and 2 and
//!   those the hook names); the host's copies of those descriptors are closed only after
//!   the clone copied them (a number closed before could be reused by another thread for
//!   another file, say the store's WAL, which C would then write its reports to), and a
//!   spawn canceled while C is being made leaves C to the spawner, which kills it and
//!   releases the rest as below.
//! * **Its parent-death signal.** C's `PR_SET_PDEATHSIG` fires when the thread that cloned
//!   it ends; the spawner lives as long as the process.
//! * **Reaping.** C is waited for through a pidfd (`waitid(P_PIDFD)`), so nothing else in
//!   the host (tokio's own child reaping waits only for its children) can take its status.
//!
//! Where pidfds or `waitid(P_PIDFD)` are missing (Linux < 5.4), and for every other
//! containment, C is std's fork as before.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::mpsc;

use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio_util::either::Either;

use crate::report::{TAG_SETUP_ERROR, report};
use crate::spawn::{ChildHook, StackOf, clone_vm};

/// The command's stdout, from either kind of leader.
pub(crate) type Stdout = Either<ChildStdout, pipe::Receiver>;
/// The command's stderr, from either kind of leader.
pub(crate) type Stderr = Either<ChildStderr, pipe::Receiver>;

/// The command's first process: std's fork, or C sharing the host's memory.
pub(crate) enum Leader {
    Forked(Child),
    Shared(SharedLeader),
}

impl Leader {
    /// The host pid of C (`None` once reaped).
    pub(crate) fn id(&self) -> Option<u32> {
        match self {
            Self::Forked(c) => c.id(),
            Self::Shared(s) => s.status.is_none().then_some(s.pid.cast_unsigned()),
        }
    }

    pub(crate) fn take_stdout(&mut self) -> Option<Stdout> {
        match self {
            Self::Forked(c) => c.stdout.take().map(Either::Left),
            Self::Shared(s) => s.stdout.take().map(Either::Right),
        }
    }

    pub(crate) fn take_stderr(&mut self) -> Option<Stderr> {
        match self {
            Self::Forked(c) => c.stderr.take().map(Either::Left),
            Self::Shared(s) => s.stderr.take().map(Either::Right),
        }
    }

    /// Waits for C's end (cancel-safe; the status is kept).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Self::Forked(c) => c.wait().await,
            Self::Shared(s) => s.wait().await,
        }
    }
}

/// Whether C can share the host's memory here: pidfds and `waitid(P_PIDFD)` (Linux ≥ 5.4),
/// and a spawner thread. Asked once per process.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let Ok(me) = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty())
        else {
            return false;
        };
        // Not a child of ours: ECHILD where P_PIDFD is known, EINVAL where it is not.
        let waitid = rustix::process::waitid(
            WaitId::PidFd(me.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        matches!(waitid, Err(rustix::io::Errno::CHILD)) && spawner().is_some()
    })
}

/// What C starts with: the hook (its namespace set-up, `crate::spawn`) and the descriptors
/// that become its 0, 1 and 2. Boxed, so its address is fixed while C, G and H read it.
struct Start {
    hook: ChildHook,
    stdio: [RawFd; 3],
}

impl Start {
    /// C: the standard descriptors, a process group of its own, then the hook (which sets
    /// the signal dispositions back to the default first) and never returns when it
    /// succeeds. Returns the `errno` of a failure.
    unsafe fn leader(&self) -> libc::c_int {
        // SAFETY (whole fn): plain system calls on values computed before the clone; no
        // allocation (see the module docs).
        unsafe {
            // Every signal stays blocked (the spawner's mask) until the hook has set every
            // disposition back to the default in C's own copy of the handler table (no
            // CLONE_SIGHAND) and H unblocks them right before its exec.

            // A host without its own 0, 1 or 2 may have handed one out as a pipe end: move
            // those above 2 first, so no dup2 below overwrites a later source.
            let mut stdio = self.stdio;
            for fd in &mut stdio {
                if *fd < 3 {
                    *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                    if *fd < 0 {
                        return *libc::__errno_location();
                    }
                }
            }
            for (target, fd) in (0..).zip(stdio) {
                if libc::dup2(fd, target) < 0 {
                    return *libc::__errno_location();
                }
            }
            if libc::setpgid(0, 0) != 0 {
                return *libc::__errno_location();
            }
            match self.hook.run() {
                Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
                // Only the namespace modes come here, and their hook does not return.
                Ok(()) => libc::EINVAL,
            }
        }
    }
}

extern "C" fn leader_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the boxed `Start` the `SharedLeader` keeps until C, G and H are gone.
    unsafe {
        let start = &*arg.cast::<Start>();
        let errno = start.leader();
        report(start.hook.report_fd(), TAG_SETUP_ERROR, errno);
        libc::_exit(127)
    }
}

/// A clone request for the spawner thread. It owns everything C needs, so a caller that
/// stops waiting (a canceled spawn) can free nothing C may still use: the host's copies
/// of C's descriptors are closed only after the clone copied them (a number closed
/// earlier could be reused by another thread for another file, which C would then take
/// as its stdout), and `start` and the gone pipe come back with the reply, or, when the
/// caller is gone, go to [`release_later`] with C killed.
struct Job {
    start: Box<Start>,
    stack: *mut libc::c_void,
    /// The host's copies of C's standard descriptors, of the ready and gone pipes' write
    /// ends and of the descriptors the hook names.
    host_copies: Vec<OwnedFd>,
    gone: OwnedFd,
    reply: tokio::sync::oneshot::Sender<Cloned>,
}

// SAFETY: `stack` is the top of the stacks `start` owns; the spawner only passes it to
// clone().
unsafe impl Send for Job {}

/// The spawner's reply: C's pid (or the clone's `errno`), and what C runs on.
struct Cloned {
    pid: Result<libc::pid_t, i32>,
    start: Box<Start>,
    gone: OwnedFd,
}

/// The spawner thread's queue (`None` if the thread could not be started).
fn spawner() -> Option<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("crownest-spawn".into())
                .spawn(move || spawn_loop(&rx))
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// The spawner: every signal blocked (C starts with this mask), then one clone per job, for
/// the life of the process (C's parent-death signal is tied to this thread).
fn spawn_loop(jobs: &mpsc::Receiver<Job>) {
    // SAFETY: changes this thread's own signal mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    while let Ok(job) = jobs.recv() {
        let arg: *const Start = &raw const *job.start;
        // SAFETY: see `Job`; C runs `leader_entry` on its own stack and never returns into
        // this thread's frames.
        let pid = unsafe { clone_vm(leader_entry, arg.cast_mut().cast(), false, job.stack) };
        let pid = if pid < 0 {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN))
        } else {
            Ok(pid)
        };
        drop(job.host_copies);
        let cloned = Cloned {
            pid,
            start: job.start,
            gone: job.gone,
        };
        if let Err(Cloned { pid, start, gone }) = job.reply.send(cloned) {
            // The spawn was canceled while C was being made.
            match pid {
                Ok(pid) => {
                    // SAFETY: our unreaped child: the pid cannot have been reused.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    release_later(start, Some(gone), Some(Unreaped::Pid(pid)));
                }
                Err(_) => drop(start),
            }
        }
    }
}

/// C sharing the host's memory, waited for through a pidfd; killed when dropped unreaped
/// (as std's child with `kill_on_drop`).
pub(crate) struct SharedLeader {
    pid: libc::pid_t,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    /// The read end of the "gone" pipe (see the module docs).
    gone: Option<OwnedFd>,
    /// What C, G and H run on.
    keep: Option<Box<Start>>,
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// `fd` registered with the runtime for readability.
fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the descriptor, which stays open as long as it does.
    Ok(unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?)
}

fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

impl SharedLeader {
    /// Starts C for `hook` (a namespace-mode hook with its stacks), its stdin `/dev/null`
    /// and its stdout and stderr pipes to the returned leader; `hook_fds` are the
    /// descriptors the hook names (its cwd, report pipe, network namespace), which the
    /// spawn owns until C has its copies. Returns once C has set up the namespace and G has
    /// exec'd the command (or either failed: C's report then says why), as std's spawn
    /// returns once the exec happened.
    pub(crate) async fn spawn(hook: ChildHook, hook_fds: Vec<OwnedFd>) -> io::Result<Self> {
        let tx = spawner().ok_or_else(|| io::Error::other("no spawner thread"))?;
        let (out_r, out_w) = cloexec_pipe()?;
        let (err_r, err_w) = cloexec_pipe()?;
        let (ready_r, ready_w) = cloexec_pipe()?;
        let (gone_r, gone_w) = cloexec_pipe()?;
        let null: OwnedFd = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into();
        let stack = hook
            .stacks()
            .map(|s| s.top(StackOf::Leader))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let start = Box::new(Start {
            hook: hook.with_gone(gone_w.as_raw_fd()),
            stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        });
        let (reply, replied) = tokio::sync::oneshot::channel();
        tx.send(Job {
            start,
            stack,
            host_copies: [null, out_w, err_w, ready_w, gone_w]
                .into_iter()
                .chain(hook_fds)
                .collect(),
            gone: gone_r,
            reply,
        })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let Ok(Cloned { pid, start, gone }) = replied.await else {
            return Err(io::Error::other("the spawner thread is gone"));
        };
        let pid = match pid {
            Ok(pid) => pid,
            // No C: nothing runs on `start`.
            Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
        };
        let mut leader = Self {
            pid,
            pidfd: None,
            status: None,
            stdout: None,
            stderr: None,
            gone: Some(gone),
            keep: Some(start),
        };
        // From here on, dropping `leader` kills and reaps C (by pid until the pidfd is
        // registered: C is our unreaped child, its pid cannot be reused meanwhile).
        let pidfd = Pid::from_raw(pid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
            .and_then(|p| Ok(rustix::process::pidfd_open(p, PidfdFlags::empty())?))?;
        leader.pidfd = Some(readable(pidfd)?);
        leader.stdout = Some(pipe::Receiver::from_owned_fd(out_r)?);
        leader.stderr = Some(pipe::Receiver::from_owned_fd(err_r)?);
        nonblocking(&ready_r)?;
        let ready = readable(ready_r)?;
        let mut buf = [0u8; 16];
        loop {
            let mut guard = ready.readable().await?;
            match rustix::io::read(ready.get_ref(), &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(leader)
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(pidfd) = &self.pidfd else {
            return Err(io::Error::other("the command's leader has no pidfd"));
        };
        let status = loop {
            let mut guard = pidfd.readable().await?;
            match reap(pidfd.get_ref(), true) {
                Ok(Some(status)) => break status,
                Ok(None) => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.status = Some(status);
        self.pidfd = None;
        self.release(None);
        Ok(status)
    }

    /// Frees what C, G and H ran on: at once when G is gone, else once it is (a thread of
    /// its own, which also reaps C when `unreaped` is given).
    fn release(&mut self, unreaped: Option<Unreaped>) {
        let Some(keep) = self.keep.take() else {
            return;
        };
        let gone = self.gone.take();
        if unreaped.is_none()
            && let Some(g) = &gone
            && nonblocking(g).is_ok()
            && matches!(rustix::io::read(g, &mut [0u8; 1]), Ok(0))
        {
            drop(keep);
            return;
        }
        release_later(keep, gone, unreaped);
    }
}

/// On a thread of its own: reaps C (when given), waits for EOF on the gone pipe, then
/// frees what C, G and H ran on.
fn release_later(keep: Box<Start>, gone: Option<OwnedFd>, unreaped: Option<Unreaped>) {
    // Leaked unless the thread starts: a failed spawn drops its closure, which must not
    // free what C, G and H may still run on.
    let keep = Leaked(Box::into_raw(keep));
    let waiter = std::thread::Builder::new()
        .name("crownest-reap".into())
        .spawn(move || {
            // SAFETY: the pointer `Box::into_raw` gave above, taken back once.
            let keep = unsafe { Box::from_raw(keep.into_inner()) };
            if let Some(c) = unreaped {
                c.reap_blocking();
            }
            if let Some(g) = gone {
                let _ = rustix::fs::fcntl_setfl(&g, rustix::fs::OFlags::empty());
                let mut b = [0u8; 1];
                loop {
                    match rustix::io::read(&g, &mut b) {
                        Ok(0) => break,
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        // Cannot tell whether G is gone: keep the memory mapped.
                        Err(_) => {
                            std::mem::forget(keep);
                            return;
                        }
                    }
                }
            }
            drop(keep);
        });
    if let Err(e) = waiter {
        // Without a thread to wait, the memory stays mapped (a few pages) rather than be
        // freed under a process that may still run on it.
        tracing::warn!(error = %e, "no thread to reap a killed command's leader: its stacks stay mapped");
    }
}

impl Drop for SharedLeader {
    fn drop(&mut self) {
        if self.status.is_some() {
            self.release(None);
            return;
        }
        let unreaped = match self.pidfd.take().map(AsyncFd::into_inner) {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
                Unreaped::Pidfd(fd)
            }
            None => {
                // SAFETY: our unreaped child (see `spawn`).
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
                Unreaped::Pid(self.pid)
            }
        };
        self.release(Some(unreaped));
    }
}

/// A boxed `Start` given up by its owner.
struct Leaked(*mut Start);

// SAFETY: `Start` is `Send` (the box it came from moved between threads); the pointer is
// only turned back into that box, once.
unsafe impl Send for Leaked {}

impl Leaked {
    fn into_inner(self) -> *mut Start {
        self.0
    }
}

/// A killed C still to be reaped.
enum Unreaped {
    Pidfd(OwnedFd),
    Pid(libc::pid_t),
}

impl Unreaped {
    fn reap_blocking(self) {
        match self {
            Self::Pidfd(fd) => {
                while matches!(reap(&fd, false), Err(ref e) if e.kind() == io::ErrorKind::Interrupted)
                {
                }
            }
            Self::Pid(pid) => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
            }
        }
    }
}

/// `waitid(P_PIDFD, WEXITED)` on C as a wait status (`NOHANG` when `nohang`).
fn reap(pidfd: &OwnedFd, nohang: bool) -> io::Result<Option<ExitStatus>> {
    let mut options = WaitIdOptions::EXITED;
    if nohang {
        options |= WaitIdOptions::NOHANG;
    }
    let Some(st) = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), options)? else {
        return Ok(None);
    };
    let raw = if let Some(code) = st.exit_status() {
        (code & 0xff) << 8
    } else if let Some(sig) = st.terminating_signal() {
        sig | if st.dumped() { 0x80 } else { 0 }
    } else {
        return Ok(None);
    };
    Ok(Some(ExitStatus::from_raw(raw)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::report::{Reports, read_available};
    use crate::spawn::{ExecImage, HookMode, RlimitPlan};

    /// A hook for `sleep SECS` in a PID namespace, its report pipe (read end, and the write
    /// end the hook names), and the start address of its stacks' mapping.
    fn sleeper_hook(secs: &str) -> (ChildHook, (OwnedFd, OwnedFd), usize) {
        let (report_r, report_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .unwrap();
        let image = ExecImage::new(
            std::path::Path::new("/bin/sleep"),
            &["sleep".to_owned(), secs.to_owned()],
            &BTreeMap::new(),
        );
        let hook = ChildHook::new(
            HookMode::Namespace {
                user: false,
                network: false,
            },
            -1,
            report_w.as_raw_fd(),
            RlimitPlan::default(),
            None,
            false,
            image,
        );
        let base = hook.stacks().unwrap().top(StackOf::Leader) as usize - crate::spawn::CLONE_STACK;
        (hook, (report_r, report_w), base)
    }

    /// [`sleeper_hook`], started.
    async fn sleeper(secs: &str) -> (SharedLeader, OwnedFd, usize) {
        let (hook, (report_r, report_w), base) = sleeper_hook(secs);
        let leader = SharedLeader::spawn(hook, vec![report_w]).await.unwrap();
        (leader, report_r, base)
    }

    /// Whether `addr` lies in a mapping of this process (a fresh mapping may have been
    /// merged with its neighbour).
    fn mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ')?.0.split_once('-'))
            .filter_map(|(a, b)| {
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                ))
            })
            .any(|(start, end)| (start..end).contains(&addr))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ended normally, C's status is the command's and its stacks are unmapped at once;
    /// dropped while the command runs, C is killed, the whole namespace dies, C is reaped
    /// (no zombie) and only then is the memory they ran on released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_is_reaped_and_its_memory_released_ended_or_dropped() {
        if !rustix::process::geteuid().is_root() || !available() {
            eprintln!("a PID namespace without a user namespace needs root and pidfds");
            return;
        }
        let (mut leader, _report, base) = sleeper("0").await;
        assert!(mapped(base));
        let status = leader.wait().await.unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(
            !mapped(base),
            "the stacks of an ended leader are unmapped at once"
        );

        let (leader, report, base) = sleeper("30").await;
        let mut reports = Reports::default();
        reports.parse(&read_available(&report));
        let init = reports.init_pid.unwrap();
        let c = leader.pid;
        assert!(std::path::Path::new(&format!("/proc/{init}")).exists());
        drop(leader);
        until("C is reaped", || {
            !std::path::Path::new(&format!("/proc/{c}")).exists()
        })
        .await;
        until("the namespace's init is gone", || {
            !std::path::Path::new(&format!("/proc/{init}")).exists()
        })
        .await;
        until("the stacks are unmapped", || !mapped(base)).await;
    }

    /// A spawn canceled while C is being made (polled once, then dropped): C is killed and
    /// reaped by the spawner's side, and the memory is released only after that; nothing
    /// of the command is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spawn_canceled_while_cloning_kills_and_releases() {
        use futures::FutureExt as _;
        if !rustix::process::geteuid().is_root() || !available() {
            eprintln!("a PID namespace without a user namespace needs root and pidfds");
            return;
        }
        let marker = "31.4159";
        let (hook, (_report, report_w), base) = sleeper_hook(marker);
        assert!(
            SharedLeader::spawn(hook, vec![report_w])
                .now_or_never()
                .is_none()
        );
        until("the stacks are unmapped", || !mapped(base)).await;
        let left = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
            .count();
        assert_eq!(left, 0, "a `sleep {marker}` outlived its canceled spawn");
    }
}
