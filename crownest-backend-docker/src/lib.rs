//! # crownest-backend-docker
//!
//! A CrowNest [`SandboxBackend`](crownest_core::SandboxBackend) that runs each Workspace Run
//! in a hardened Docker container, through [bollard](https://docs.rs/bollard) against the
//! local Docker Engine (any engine speaking API ≥ 1.41; the version is negotiated).
//!
//! The `python-node` template is the local image `crownest/python-node:latest`, built from
//! Debian packages by `scripts/build-docker-image.sh` (there is no registry; see
//! `docs/images.md`). Its identity in evidence is the image id (`sha256:...`) and the
//! `crownest.image-key` label; containers are created from the id, so the identity is exactly
//! what ran. A missing image makes `templates()` report the template unavailable and
//! `create()` fail, both naming the script.
//!
//! ```no_run
//! use std::sync::Arc;
//! use crownest_backend_docker::{DockerBackend, DockerConfig};
//! use crownest_core::{MemoryStore, RunSpec, WorkspaceRuns};
//!
//! # async fn demo() -> crownest_core::Result<()> {
//! let docker = DockerBackend::connect(DockerConfig::default()).await?;
//! let runs = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
//!     .backend(Arc::new(docker))
//!     .open()
//!     .await?;
//! let run = runs.create(RunSpec::new(["python3", "-c", "print('hi')"]).with_backend("docker")).await?;
//! # let _ = run;
//! # Ok(())
//! # }
//! ```
//!
//! ## Capabilities
//!
//! | capability | enforced by |
//! |---|---|
//! | non-root | `User 10001:10001` (the image's `crownest` user); root is refused in config |
//! | no privileges | `CapDrop ALL`, `no-new-privileges`, docker's default seccomp profile, not privileged |
//! | network isolation | `NetworkMode none` (only `lo`) unless the run asks `network: enabled` |
//! | filesystem isolation | read-only image root, private size-limited tmpfs `/tmp`; the workspace is a directory made for this sandbox in the private work root, bind-mounted at `/workspace` (root and the local engine: the only host path mounted), else an anonymous Docker volume of the container (no host path mounted) |
//! | memory limit | `Memory` = `MemorySwap` = `limits.memoryBytes`; an OOM kill is `limit_exceeded` |
//! | pids limit | `PidsLimit` = `limits.pids` (a fork bomb stays inside) |
//! | rlimits | `nofile` = `limits.openFiles`, `core` = 0 |
//! | process-tree kill | the launcher is pid 1 (no docker-init); SIGKILL ends pid 1 and so the whole pid namespace; SIGTERM goes to pid 1, which passes it to every other process of the sandbox user (`kill -TERM -1`) |
//! | keepSandbox | the container is renamed `<sandbox>.kept-until-<unix ms>` (labels are immutable); `sweep_orphans` removes it once that passes |
//! | output | attached before the command is handed over (no early byte lost) and passed to the sink as it comes, with backpressure; the launcher outlives the command, ends stdout and stderr with a per-command end mark and exits only once the engine has acknowledged both, so the daemon's ~2 s cut of the stream after a container's exit can no longer drop a tail; a stream that breaks, or ends without its marks, fails the run (`sandbox_error`), never shortens its output silently; the log driver is `none`, so nothing is written to the daemon's disk |
//! | secrets | never in the container's configuration (`docker inspect`, the daemon's `config.v2.json`): written to the launcher's stdin with the command (see below) |
//!
//! ## Layout of one sandbox
//!
//! One container, named by the sandbox id and labelled `crownest.sandbox`,
//! `crownest.run_id`, `crownest.instance`, `crownest.owner_pid` and `crownest.owner_start`
//! (the owner process and its start time, so `sweep_orphans` can tell an orphan from a live
//! sandbox of another engine), created **with everything set in one call** and started at
//! `create()`:
//!
//! * the workspace, at `/workspace`, is either **a directory of the private work root made
//!   for this sandbox and bind-mounted** (`place.rs`: when this process is root, talks to
//!   the local engine, and no one but root can change what the work root's path resolves
//!   to; [`DockerConfig::with_host_placement`], on by default), a marked core
//!   [`SandboxDir`](crownest_core::hostdir::SandboxDir) owned by the sandbox user inside,
//!   deleted once the container stopped and swept after a crash under the one orphan rule;
//!   or else an **anonymous volume**, created with the container, removed with it (`rm
//!   -v`), labelled like it (through the mount's volume options), so a sweep finds one a
//!   crash left. A bind rather than a volume because a volume costs the daemon a metadata
//!   commit (an `fsync`) when it is created and another when it is removed, both on the
//!   run's path, and its tree must be copied in; the bound directory receives the checked
//!   tree by `renameat`;
//! * its `Cmd` is the **launcher** (`launcher.rs`, POSIX `sh`), which waits on stdin for
//!   the command: `Env` is the template's (`PATH`, `HOME=/workspace`, `LANG=C.UTF-8`; Docker
//!   adds `HOSTNAME=sandbox`), `WorkingDir` is `/workspace`, `OpenStdin` is set;
//! * `materialize` extracts the archive with the core extractor into a host staging
//!   directory (a marked core [`SandboxDir`](crownest_core::hostdir::SandboxDir) of the
//!   private work root, which the core host-directory sweep removes if a crash leaves it).
//!   With a bound workspace, that tree (or the tree prepared at upload, which lives on the
//!   same work root) is handed to the sandbox user (every entry chowned without following
//!   a link, setuid/setgid/sticky cleared) and **moved** into the bound directory, one
//!   `renameat` per top-level entry, **while the container starts** (`create` leaves the
//!   start in flight; `exec` waits for it): no program runs in the container for it, and
//!   nothing is copied. Otherwise it
//!   streams it as a tar (every entry owned by uid/gid 10001, hardlinks as links)
//!   straight into the running container's workspace: through the launcher, over the
//!   attach stream the command will use (`upload::stream_to_launcher`: `tar -x` run by the
//!   sandbox user inside the container, before any command; step 0 of `launcher.rs`; the
//!   container is attached **before** its start and the workspace offered right then, as
//!   `docker run` attaches, so the launcher's answer waits in the stream and the hand-over
//!   costs no attach and no round trip; a command that comes without `materialize` ends
//!   the offer with an empty archive), or,
//!   when the image has no `tar`, with `PUT /containers/{id}/archive`
//!   (`upload::upload_tree`). Nothing else of the host is mounted;
//! * `exec` checks `cwd` against what was uploaded and looks `argv[0]` up the way `execvp`
//!   does (image paths are stat-ed through the API, all of `PATH` at once, and the answers
//!   kept per image id, in memory and in the private work root as `paths-<image id>.json`:
//!   an image id names its content, so a path's answer in a fresh container of it never
//!   changes, and the next process asks again only for what it has not seen), so an unknown
//!   program is `spawn_failed` before anything starts; then it attaches (stdin, stdout,
//!   stderr; or keeps the attachment the workspace went through) and writes one frame to
//!   the launcher: the cwd, the variables (the request's
//!   plain `env` and its secrets alike), argv. The launcher `cd`s, exports them and `exec`s
//!   argv with stdin on `/dev/null`, keeping its pid, so signals, the exit status and the
//!   OOM report are the command's own. **Nothing of a request is in the container's
//!   configuration** (`docker inspect`, also of a kept sandbox, shows the launcher and the
//!   template's variables only).
//!
//! A tiny run costs the Docker API one create, one attach, one start, one wait and one
//! remove (plus a few cheap lists, and stats of programs not seen before), where it used to
//! create a volume and two containers and remove all three. The wait (`not-running`) is
//! Docker's word that the container stopped; an inspection follows only when the status is
//! not 0 (for `OOMKilled`: a command that exited 0 succeeded whatever the OOM killer did to
//! one of its processes). The removal asks for the label listing while the container is
//! being removed, and checks what is left with one volume listing and, at once, the
//! container's 404 and an empty label listing; a bound workspace directory is deleted
//! (through a tombstone) as soon as the container is stopped.
//!
//! ## The warm pool
//!
//! [`DockerConfig::with_pool`] keeps N sandboxes of a template created and started ahead
//! of their runs (`crownest serve --pool docker:python-node=N`): a run whose template,
//! network (`none`) and memory/pids/open-files limits ([`DockerConfig::pool_limits`]) match
//! takes one, with the same hardening (one call makes both; `tests/pool.rs` compares
//! `docker inspect` of a pooled and a fresh one), and skips the create and the start (the
//! bulk of a tiny run). Each member is taken by exactly one run under a lock, destroyed
//! after it like any sandbox, never reused; the pool refills in the background, is drained
//! by [`SandboxBackend::shutdown`](crownest_core::SandboxBackend::shutdown), and its
//! members carry the owner labels (no run label, plus `crownest.pool=<template>`), so after
//! a crash any engine's sweep removes them under the one orphan rule. The isolation report
//! (and so the evidence) says `pooled: true`. Its state is
//! [`SandboxBackend::pools`](crownest_core::SandboxBackend::pools) (per process) and
//! [`DockerBackend::pools_on_host`] (every process's, from the labels); an idle member is a
//! `sh` waiting on its stdin as pid 1: about a megabyte of memory, no CPU.
//!
//! Artifacts are read from the stopped container through a private host mirror that never
//! follows a symlink (see `download.rs`) and then judged by
//! [`crownest_core::artifact::collect_from_dir`]. `destroy()` force-removes the containers
//! (with their anonymous volumes) and the volume, then verifies with inspect that each
//! answers 404, then deletes the bound workspace directory (waiting up to 10 s for it,
//! else `removalPending`). Containers are never auto-removed, so the exit code and `OOMKilled` can
//! always be read.
//!
//! With [`DockerConfig::with_background_removal`] (what the CLI sets, for `run` and
//! `serve`), a sandbox whose container Docker reported stopped after its command is removed
//! after `destroy()` returns [`Destroyed::RemovalPending`](crownest_core::Destroyed): the
//! run's terminal commit no longer waits for the daemon's removal (23–59 ms of a tiny run
//! under load). The evidence says what is known at that commit: `destroyed: true` (nothing
//! of the sandbox runs: its container stopped; nothing reaches it: no process, no network
//! namespace, nothing of the host mounted into a running container) and `removalPending:
//! true` (its container, and its workspace volume or bound directory, were still being
//! removed; the directory is unreachable by its name from the start of the removal). The removal is verified like a synchronous
//! one and retried; `shutdown()` waits for it; a crash leaves a stopped container labelled
//! with a dead owner, which the next sweep removes. A sandbox that never ran its command
//! or whose end Docker did not confirm is removed before `destroy()` returns.
//!
//! ## Performance
//!
//! `scripts/bench-docker.sh` times a tiny run as a whole process (`crownest run`, and a
//! client against `crownest serve` with and without a pool) against `docker run --rm
//! --network none crownest/python-node true`; its numbers are in `docs/benchmarks.md`.
//! `examples/docker_overhead.rs` times the backend alone (`create` → `materialize` →
//! `exec` → `destroy`).
//!
//! Output is whole or the run fails: under CPU starvation the daemon used to cut a
//! run's stdout tail at exit with a clean end of the stream (7 512 064 of 8 000 000 bytes,
//! `hardening.rs::large_output_arrives_complete_and_in_order`, 2026-12-06), recorded as a
//! complete output. The launcher's end marks (see `launcher.rs`) close that: the container
//! cannot exit before both are read, and `tests/output_stream.rs` cuts a stream cleanly
//! between frames to check that a missing mark fails the run.
//!
//! Known limits: the workspace (the bound directory on the work root's disk, or the
//! volume on the Docker root disk) is not size-capped (neither a bind nor the `local`
//! volume driver has a quota on this storage driver); the command can fill it. Exit codes `128+n` are reported as `signaled` only for signals this sandbox sent.

mod backend;
mod cleanup;
mod config;
mod container;
mod download;
mod error;
mod exec;
mod image;
mod interpreters;
mod launcher;
mod place;
mod pool;
mod sandbox;
mod sweep;
mod upload;

pub use backend::DockerBackend;
pub use config::{DEFAULT_IMAGE, DockerConfig, PYTHON_NODE};
pub use container::{
    LABEL_INSTANCE, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_POOL, LABEL_ROLE, LABEL_RUN,
    LABEL_SANDBOX, kept_container_name,
};
pub use error::DockerError;
pub use image::IMAGE_KEY_LABEL;
pub use pool::HostPool;
pub use sandbox::DockerSandbox;

/// The registered backend name ([`crownest_core::SandboxBackend::name`]).
pub const BACKEND: &str = "docker";
