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
//! | filesystem isolation | read-only image root, private size-limited tmpfs `/tmp`, the workspace on a Docker volume; no host path is mounted |
//! | memory limit | `Memory` = `MemorySwap` = `limits.memoryBytes`; an OOM kill is `limit_exceeded` |
//! | pids limit | `PidsLimit` = `limits.pids` (a fork bomb stays inside) |
//! | rlimits | `nofile` = `limits.openFiles`, `core` = 0 |
//! | process-tree kill | docker-init (tini) is pid 1; SIGKILL ends pid 1 and so the whole pid namespace; SIGTERM goes to the command and is broadcast to every other process of the sandbox user |
//! | keepSandbox | the container is renamed `<sandbox>.kept-until-<unix ms>` (labels are immutable); `sweep_orphans` removes it once that passes |
//! | output | attached before start (no early byte lost), read with backpressure; the log driver is `none`, so nothing is written to the daemon's disk |
//! | secrets | never in the container's configuration (`docker inspect`, the daemon's `config.v2.json`): written to a launcher's stdin after the start (see the run container below) |
//!
//! ## Layout of one sandbox
//!
//! Every resource carries the labels `crownest.sandbox`, `crownest.run_id`,
//! `crownest.instance`, `crownest.owner_pid` and `crownest.owner_start` (the owner process and
//! its start time, so `sweep_orphans` can tell an orphan from a live sandbox of another engine).
//!
//! * a named volume `<sandbox>` mounted at `/workspace` (a volume, because Docker refuses
//!   archive uploads into a read-only root, and a tmpfs would not keep files uploaded
//!   before start);
//! * a **stage** container `<sandbox>-stage`, created at `create()` and never started: it
//!   holds the volume so `materialize` can upload into it. The archive is extracted by the
//!   core extractor into a host staging directory (a marked core
//!   [`SandboxDir`](crownest_core::hostdir::SandboxDir) of the private work root, which the
//!   core host-directory sweep removes if a crash leaves it), then streamed as a tar (every
//!   entry owned by uid/gid 10001, hardlinks as links) into the volume with
//!   `PUT /containers/{id}/archive`. Nothing of the host is bind-mounted. The stage
//!   container is removed (in the background, while the command starts) as soon as the run
//!   container holds the volume;
//! * a **run** container `<sandbox>`, created by `exec` with `Cmd` = argv exactly,
//!   `WorkingDir` = `/workspace/<cwd>` and `Env` = `PATH`, `HOME=/workspace`,
//!   `LANG=C.UTF-8` plus the request's plain variables (Docker itself adds
//!   `HOSTNAME=sandbox`). **Secrets are never in `Env`** (nor anywhere else `docker inspect`
//!   shows, also of a kept sandbox): a run with secrets gets `Cmd` = a small POSIX `sh`
//!   launcher followed by argv, the engine writes the secrets to its stdin right after the
//!   start, and the launcher exports them and `exec`s argv with stdin on `/dev/null` (see
//!   `secrets.rs` for the frame and why).
//!   A container's `Cmd` is fixed at creation, and `create()` does not know the command
//!   yet: that is why the stage container exists. `exec` checks `cwd` against what was
//!   uploaded and looks `argv[0]` up the way `execvp` does (image paths are stat-ed through
//!   the API and cached per image id), so an unknown program is `spawn_failed` before
//!   anything starts.
//!
//! Artifacts are read from the stopped container through a private host mirror that never
//! follows a symlink (see `download.rs`) and then judged by
//! [`crownest_core::artifact::collect_from_dir`]. `destroy()` force-removes the containers
//! (with their anonymous volumes) and the volume, then verifies with inspect that each
//! answers 404. Containers are never auto-removed, so the exit code and `OOMKilled` can
//! always be read.
//!
//! ## Performance (this machine: 2 cores, Docker 20.10, fuse-overlayfs, cgroup v1)
//!
//! `examples/docker_overhead.rs`, release build, N = 10, interleaved, under load from
//! parallel builds: a tiny run (`create` → `materialize` one file → `exec true` →
//! `destroy`) has a median of 0.97–1.06× `docker run --rm crownest/python-node true`
//! (≈ 500–560 ms; `docker start` alone is ≈ 250 ms of it) and 1.13–1.21× a `docker run`
//! with the same hardening flags (no network namespace and no log file make that one
//! faster). Uploading a 2 000-file / 20 MB workspace into the volume takes ≈ 1.0 s on top
//! of the 0.4 s host extraction, the same as `docker cp` of that tar.
//!
//! Known limits: the workspace volume lives on the Docker root disk and is not size-capped
//! (the `local` volume driver has no quota on this storage driver); the command can fill
//! it. Exit codes `128+n` are reported as `signaled` only for signals this sandbox sent.

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
mod pool;
mod sandbox;
mod sweep;
mod upload;

pub use backend::DockerBackend;
pub use config::{DEFAULT_IMAGE, DockerConfig, PYTHON_NODE};
pub use container::{
    LABEL_INSTANCE, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_POOL, LABEL_ROLE, LABEL_RUN,
    LABEL_SANDBOX,
};
pub use error::DockerError;
pub use image::IMAGE_KEY_LABEL;
pub use pool::HostPool;
pub use sandbox::DockerSandbox;

/// The registered backend name ([`crownest_core::SandboxBackend::name`]).
pub const BACKEND: &str = "docker";
