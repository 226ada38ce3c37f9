//! # crownest-backend-process
//!
//! A CrowNest [`SandboxBackend`](crownest_core::SandboxBackend) that runs the command as a
//! plain **host process**, for test harnesses and trusted code.
//!
//! **This backend is NOT a security boundary.** The command runs as the same user as the
//! host application, sees the host's filesystem (it can read anything that user can read
//! and write anywhere that user can write), and its memory and process count are not
//! capped. What it does give you: a fresh directory per run, an environment that contains
//! only what the spec says, a closed stdin, rlimits, streaming output with backpressure, and
//! a reliable kill of *everything* the command started. Run untrusted code on the docker
//! or wasm backend instead.
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
//! | rlimits | `RLIMIT_NOFILE` = `limits.openFiles`, `RLIMIT_CORE` = 0, `RLIMIT_FSIZE` = max(`artifactBytesEach`, `extractedBytes`) (`SIGXFSZ` ends the run as `limit_exceeded`); no `RLIMIT_NPROC` (it is per user, not per sandbox) |
//! | output | read in ≤ 64 KiB pieces, each awaited by the sink (backpressure); after the command exited, pipes idle for `drain_timeout` are abandoned and reported |
//! | template `python-node` | host `python3` and `node` resolved on `PATH`; identity = paths + `--version`; available when `python3` exists (`node.missing` is recorded otherwise) |
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
//! ## Capabilities
//!
//! | capability | value |
//! |---|---|
//! | `networkIsolation` | true with a namespace containment and `isolate_network` |
//! | `memoryLimit`, `pidsLimit`, `filesystemIsolation` | false |
//! | `processTreeKill` | true except with `ProcessGroup` |
//! | `keepSandbox` | true |
//! | `nonRoot` | true when the host process is not root |
//! | `securityBoundary` | **false** |

mod backend;
mod cgroup;
mod config;
mod containment;
mod error;
mod marker;
mod output;
mod probe_cache;
mod procfs;
mod spawn;
mod template;
mod workspace;

pub use backend::{ProcessBackend, ProcessSandbox};
pub use config::{Containment, ProcessConfig};
pub use error::ProcessError;
