//! # crownest-backend-process
//!
//! A CrowNest [`SandboxBackend`](crownest_core::SandboxBackend) that runs the command as a
//! plain **host process**, for test harnesses and trusted code.
//!
//! **This backend is NOT a security boundary.** The command runs as the same user as the
//! host application, sees the host's filesystem (it can read anything that user can read
//! and write anywhere that user can write), and its memory and process count are not
//! capped. What it does give you: a fresh directory per run, an environment that contains
//! only what the spec says, a closed stdin, no inherited descriptor beyond 0–2, no
//! capability (when the host is root, see [below](#when-the-host-runs-as-root)), rlimits,
//! streaming output with backpressure, and a reliable kill of *everything* the command
//! started. Run untrusted code on the docker or wasm backend instead.
//!
//! ```no_run
//! # async fn demo() -> crownest_core::Result<()> {
//! use std::sync::Arc;
//! use crownest_backend_process::{ProcessBackend, ProcessConfig};
//! use crownest_core::{MemoryStore, RunSpec, WorkspaceRuns};
//!
//! let backend = ProcessBackend::new(ProcessConfig::default())?;
//! println!("containment: {}", backend.containment());
//! let engine = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
//!     .backend(Arc::new(backend))
//!     .open()
//!     .await?;
//! let run = engine.create(RunSpec::new(["python3", "-c", "print('hi')"])).await?;
//! # let _ = run; Ok(()) }
//! ```
//!
//! ## What a run gets
//!
//! | aspect | behaviour |
//! |---|---|
//! | directory | `<root>/<run id>-<random>/` (0700) with `workspace/` (the archive, the cwd base, `HOME`), `tmp/` (`TMPDIR`) and a marker file `crownest-sandbox.json` (run, engine, owner pid, `keepUntil`, last processes) |
//! | environment | cleared; then `PATH` (`ProcessConfig::path`), `HOME`, `LANG=C.UTF-8`, `TMPDIR`, then the spec's env and secrets (passed to the process only; visible, as any environment, in `/proc/<pid>/environ` to the same user and root) |
//! | cwd | `workspace/<cwd>`, opened component by component without following symlinks; otherwise `spawn_failed` |
//! | stdin | `/dev/null` |
//! | signals | nothing blocked, every disposition the default: handled **and ignored** signals of the host (a Rust host ignores `SIGPIPE`; a host started under `nohup` ignores `SIGHUP`) are reset before exec, so the kill ladder's `SIGTERM` and a pipe's `SIGPIPE` act on the command as on a fresh process (std's spawn resets only `SIGPIPE`) |
//! | descriptors | only 0, 1, 2: every other descriptor of the host process, `O_CLOEXEC` or not, is closed by the exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` right before it, else each entry of `/proc/self/fd`; either failing fails the spawn) |
//! | host privilege | none: as root, holding any capability, or in its own user namespace, the command's bounding, ambient, effective, permitted and inheritable capability sets are emptied and `no_new_privs` is set right before exec; recorded as `hostPrivilege` (and `noNewPrivileges`) in the isolation details. The uid stays the host's |
//! | rlimits | `RLIMIT_NOFILE` = `limits.openFiles`, `RLIMIT_CORE` = 0, `RLIMIT_FSIZE` = max(`artifactBytesEach`, `extractedBytes`) (`SIGXFSZ` ends the run as `limit_exceeded`); no `RLIMIT_NPROC` (it is per user, not per sandbox) |
//! | output | read in ≤ 64 KiB pieces, each awaited by the sink (backpressure); after the command exited, pipes idle for `drain_timeout` are abandoned and reported |
//! | template `python-node` | host `python3` and `node` resolved on `PATH`; identity = paths + `--version` (cached per boot for unchanged ELF executables: `version_cache.rs`); available when `python3` exists (`node.missing` is recorded otherwise) |
//!
//! ## Containment (probed once, reported truthfully)
//!
//! | [`Containment`] | needs | kills daemons that `setsid`/double-fork | `processContainment` |
//! |---|---|---|---|
//! | `PidNamespace` | root | yes: the command runs under a tiny init, PID 1 of a new PID namespace; when the command exits or is killed, the kernel kills the namespace | `pid_namespace` |
//! | `UserNamespace` | unprivileged user namespaces | yes (same, inside a new user namespace with identity uid/gid maps) | `pid_namespace` |
//! | `Cgroup` | a writable cgroup v2 with `cgroup.kill` | yes (`cgroup.kill`) | `cgroup` |
//! | `ProcessGroup` | nothing | only those seen by a 50 ms `/proc` scan; survivors are reported | `process_group` |
//!
//! The probe forks into fresh namespaces (1–13 ms), so its result is cached: in memory for
//! the process, and in `<root>/.containment-probe.json` (mode 0600, written atomically),
//! keyed by the boot id, the effective uid, the kernel release and the configuration
//! (`containment`, `isolate_network`, `cgroup_parent`). The root is ours and mode 0700, so
//! no other user can plant that file; an unreadable, stale or malformed file is ignored and
//! the probe runs again. Should a cached result no longer work when a command is spawned
//! (say its cgroup was removed), the backend re-probes once, retries, and records it as
//! `containmentReprobed` in the sandbox's isolation details.
//!
//! With a namespace containment, `network: none` runs also get an empty network namespace
//! (no interfaces; even loopback is down), and the capabilities say `networkIsolation`.
//! Without a user namespace the backend makes that namespace ahead, off the spawn's path,
//! and each goes to exactly one command (`netns.rs`).
//! Everything else is reported as not enforced: `memoryLimit`, `pidsLimit` and
//! `filesystemIsolation` are false, `securityBoundary` is false.
//!
//! The relay and the init carry `PR_SET_PDEATHSIG(SIGKILL)`, which Linux ties to the
//! *thread* that spawned them: spawns happen on the tokio worker thread that polls `exec`,
//! so commands die with the runtime (or the host process), never earlier. After a host
//! crash, `sweep_orphans` kills what a sandbox's marker says is left and removes it.
//! A sandbox directory is built under `.creating-<pid>-<start ticks>-<id>` and renamed into
//! place only when its marker and subdirectories exist, and it is renamed to `.removing-<id>`
//! before it is deleted: a host killed at any point leaves either a complete sandbox with a
//! marker, a `.creating-` directory whose builder is gone, or a `.removing-` one, and the
//! sweep clears all three.
//!
//! ## When the host runs as root
//!
//! The command keeps uid 0 but holds **no capability** (see the table above; without
//! `CAP_SETPCAP` only the bounding set stays, and `hostPrivilege` says `bounding set kept`;
//! `no_new_privs` means exec still cannot grant anything). Its init (PID 1 of the
//! namespace) keeps its capabilities, so the command cannot `ptrace` it or forge its report.
//! Without a user namespace the init and its parent share the host process's memory (they
//! are `clone(CLONE_VM)` children, not forks: `leader.rs`, for speed); the same rule keeps
//! the command out of it (`/proc/<pid>/mem` of all three cannot be opened; tested in
//! `tests/engine.rs`).
//!
//! | protected | how |
//! |---|---|
//! | `network: none` (namespace containment) | `setns` into the host's network (or any) namespace needs `CAP_SYS_ADMIN`; `/proc/<host pid>/ns/*` of a process with capabilities cannot even be opened: `nsenter -t <host pid> -n` fails |
//! | host processes with capabilities | no `ptrace`, no `/proc/<pid>/{mem,fd,environ,ns}` (the kernel requires the target's capabilities to be a subset of the caller's) |
//! | what needs a capability | no mounts, module loading, raw or packet sockets, `mknod`, `chown` to another user, `setuid` to another user, BPF, reboot, clock changes; no bypass of permission bits (`CAP_DAC_OVERRIDE`) on files of other users |
//! | setuid / file-capability binaries | `no_new_privs`: they run without gaining anything |
//!
//! | **not** protected | why |
//! |---|---|
//! | root's files | uid 0 owns them: it can read and write them and `chmod` what it cannot (e.g. `/etc/crontab`, `/root/.ssh`) — that alone is a way to root on the host |
//! | root-owned device nodes and kernel settings | permission is checked by owner: a disk's node (`root:disk 0660`) opens read-write unless a device cgroup forbids it; `/proc/sys` and `/sys` files writable by their owner (e.g. `kernel.core_pattern`, unless mounted read-only) can be written |
//! | root's unix sockets | owned by uid 0, e.g. `/var/run/docker.sock` (full control of the host), reachable even with `network: none` |
//! | host processes of uid 0 | outside a PID namespace (`cgroup`, `process_group`) it can signal (kill) them; inside one it cannot address them. Root processes that themselves hold no capability can be `ptrace`d |
//! | cgroup containment | it can write root-owned `cgroup.procs` files and move itself out of its cgroup |
//!
//! So this is defence against accidents and against a command that reaches for the host's
//! namespaces, **not** a security boundary: a command running as uid 0 on the host's
//! filesystem can become root. Run the host process as a non-root user, or use the docker
//! or wasm backend, for code you do not trust.
//!
//! ## Capabilities
//!
//! | capability | value |
//! |---|---|
//! | `networkIsolation` | true with a namespace containment and `isolate_network` |
//! | `memoryLimit`, `pidsLimit`, `filesystemIsolation` | false |
//! | `processTreeKill` | true except with `ProcessGroup` |
//! | `keepSandbox` | true |
//! | `nonRoot` | true when the host process is not root (as root the command is uid 0 without capabilities: still not `nonRoot`) |
//! | `securityBoundary` | **false** |

mod backend;
mod cgroup;
mod config;
mod containment;
mod descriptors;
mod error;
mod isolation;
mod launch;
mod leader;
mod netns;
mod output;
mod privilege;
mod probe_cache;
mod procfs;
mod report;
mod sandbox;
mod shared;
mod spawn;
mod template;
mod version_cache;
mod workspace;

pub use backend::ProcessBackend;
pub use config::{Containment, ProcessConfig};
pub use error::ProcessError;
pub use sandbox::ProcessSandbox;

/// The registered backend name ([`crownest_core::SandboxBackend::name`]).
pub const BACKEND: &str = "process";
