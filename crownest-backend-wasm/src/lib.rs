//! # crownest-backend-wasm
//!
//! A CrowNest [`SandboxBackend`](crownest_core::SandboxBackend) that runs commands as WASI
//! preview 1 modules inside [wasmtime](https://wasmtime.dev) (pinned `=48.0.8`). The
//! built-in `python-node` template maps `argv[0]` to a module (templates of your own: below):
//!
//! | `argv[0]` | module | what it is |
//! |---|---|---|
//! | `python`, `python3`, `python3.12` | `python-3.12.0.wasm` | CPython 3.12.0 for wasm32-wasi (VMware Wasm Labs), standard library embedded |
//! | `node` | `quickjs.wasm` | QuickJS-NG 0.11.0 for wasm32-wasi: **not Node.js** (below) |
//! | anything else | — | `ExitStatus::SpawnFailed`: there is no shell, no PATH, no other program |
//!
//! The modules are fetched and verified by `scripts/fetch-wasm-modules.sh` into
//! `${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}/wasm/`; their sha256 are pinned in
//! `modules.lock`, which is compiled into this crate and checked again by the backend. A
//! missing or different module makes the template unavailable, with a reason naming the
//! script. The template identity (in the Evidence Bundle) lists each module's file, size,
//! sha256, build and source, and the wasmtime version.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use crownest_backend_wasm::{WasmBackend, WasmConfig};
//! use crownest_core::{MemoryStore, RunSpec, WorkspaceRuns};
//!
//! # async fn demo() -> crownest_core::Result<()> {
//! let wasm = WasmBackend::new(WasmConfig::default())?;
//! wasm.preload().await?; // compile or load both modules before the first run
//! let runs = WorkspaceRuns::builder(Arc::new(MemoryStore::new()))
//!     .backend(Arc::new(wasm))
//!     .open()
//!     .await?;
//! let spec = RunSpec::new(["python3", "-c", "open('out.txt', 'w').write('hi')"])
//!     .with_backend("wasm")
//!     .with_artifact("out.txt", true);
//! let run = runs.create(spec).await?;
//! # let _ = run;
//! # Ok(())
//! # }
//! ```
//!
//! ## Templates of your own
//!
//! A host application registers more templates with [`WasmConfig::with_template`]: a name
//! and a [`WasmTemplate`], which gives per [`Interpreter`] (`python` and/or `node`) a
//! [`WasmModule`]: an absolute file path and the sha256 the host pins it to (as
//! `modules.lock` pins the built-in modules).
//!
//! ```no_run
//! use crownest_backend_wasm::{Interpreter, WasmBackend, WasmConfig, WasmModule, WasmTemplate};
//! use crownest_core::{SandboxBackend, Sha256Digest};
//!
//! # async fn demo() -> crownest_core::Result<()> {
//! let python = WasmModule::new(
//!     "/opt/wasm/my-python.wasm",
//!     Sha256Digest::parse("e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763")?,
//! )?;
//! let wasm = WasmBackend::new(
//!     WasmConfig::default()
//!         .with_template("my-py", WasmTemplate::new().with_module(Interpreter::Python, python)),
//! )?;
//! for t in wasm.templates().await? {
//!     println!("{} available: {} {:?}", t.name, t.available, t.reason);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! * [`SandboxBackend::templates`](crownest_core::SandboxBackend::templates) lists
//!   `python-node` and the registered ones (sorted by name; a registered `python-node`
//!   replaces the built-in one), each with its identity: per module its file, size,
//!   sha256, description (known by digest: a copy of the pinned CPython is described as
//!   that build, another module as an unknown build identified by its sha256) and source,
//!   and `python3.missing` / `node.missing` for an interpreter it does not register.
//! * A module is hashed when its template is listed, when a sandbox is created, before
//!   each command, and when it is compiled. A missing file or a digest that differs makes
//!   only its template unavailable, with a reason naming the file and the digest expected;
//!   it is never compiled or run (a file changed after its sandbox was created makes the
//!   command `SpawnFailed`).
//! * Modules are compiled into the same cache as the built-in ones (keyed by digest), so
//!   the same bytes under another name are compiled once.
//! * `create` with a template the backend does not serve is
//!   [`Error::InvalidSpec`](crownest_core::Error::InvalidSpec) (field `template`, naming
//!   those it serves); with an unavailable one, the same with the reason. A command whose
//!   `argv[0]` selects an interpreter the template lacks is `ExitStatus::SpawnFailed`,
//!   naming the programs it has.
//! * A `python` module runs like the built-in CPython (the `sitecustomize.py` glue below,
//!   `PYTHONPATH`, the `/.crownest/python` preopen), so it should be a CPython build for
//!   WASI preview 1; a `node` module gets only its arguments, environment and preopens.
//!
//! ## What it enforces
//!
//! | capability | how |
//! |---|---|
//! | filesystem isolation | only the run's workspace is preopened, read-write, at `/workspace`; the working directory is also preopened at `/` (WASI preview 1 programs start in `/` and wasi-libc resolves relative paths against it), and for CPython a read-only `/.crownest/python` holds the `sitecustomize.py` that moves it into the working directory. Everything goes through wasmtime-wasi's capability-based (cap-std) filesystem: `..` and symlinks cannot leave a preopened directory, `/etc/passwd` does not exist |
//! | network isolation | no sockets: none preopened; TCP, UDP and name lookup denied |
//! | memory limit | `limits.memoryBytes` caps the guest's linear memory ([`wasmtime::StoreLimits`], trap on grow failure) → `LimitExceeded`; instances, tables and memories are capped too |
//! | process tree kill / pids | one guest, which cannot create processes; `signal(Term)` / `signal(Kill)` stop it at once → `Signaled(15)` / `Signaled(9)` |
//! | deadlines | epoch interruption (a ticker thread, 10 ms) makes busy guests yield; stopping drops the running call, so a guest blocked in a host call (`time.sleep(1000)`) stops too; a backstop deadline of `timeout + killGrace + 5 s` ends the guest if nobody signals it |
//! | stdin / env / args | stdin closed; env, secrets and args exactly as given (secrets live only in the WASI context in memory) (CPython also gets `PYTHONPATH` and `CROWNEST_WASM_CWD`, which its `sitecustomize.py` removes again) |
//! | output | stdout/stderr go through an output stream that waits until the engine's sink accepted each write (backpressure; never a buffer that traps when full) |
//! | non-root | not claimed: WASI has no users, files are written as the host process's user |
//! | disk quota | none: a guest can fill the workspace's file system |
//!
//! ## Exit statuses
//!
//! * `proc_exit(n)` / `sys.exit(n)` → `Exited(n)`; returning from `_start` → `Exited(0)`.
//! * Memory (or table) limit hit → `LimitExceeded` with the sizes.
//! * Stopped by `signal` → `Signaled(15)` for `Term`, `Signaled(9)` for `Kill` (WASI has no
//!   signals: both stop the guest at once); by the backstop deadline → `Signaled(9)`.
//! * Any other trap (unreachable, stack overflow, out-of-bounds) → `Signaled(6)`
//!   ([`TRAP_SIGNAL`], like `SIGABRT`), with the trap written to the command's stderr.
//!
//! ## `node` is QuickJS, not Node.js
//!
//! `node script.js` and `node -e CODE` work, but the engine is QuickJS-NG: ES2023 and the
//! `qjs:std` / `qjs:os` modules (`std.loadFile`, `std.open`, `os.readdir`...), `print` and
//! `console.log`, `scriptArgs` for the arguments. There is **no npm**, no `require`, no
//! Node built-in modules (`fs`, `path`, `http`, `child_process`...), no `process` object,
//! no event loop beyond promises and `os.setTimeout`, and `os.getcwd()` reports `/` (the
//! working directory's contents are there).
//!
//! ## What CPython on WASI cannot do
//!
//! [`LIMITATIONS`] lists it (and `crownest doctor` prints it): no threads
//! (`threading.Thread.start` raises `RuntimeError: can't start new thread`), no processes
//! (`subprocess`, `os.fork`), no working `os.dup` (it raises
//! `OSError: [Errno 58] Not supported`; file-descriptor capture and `faulthandler` need
//! it), no `os.umask`, no `os.getuid` and friends (no users), no signals, no sockets. Two
//! things a test runner needs are bridged: a relative `PYTHONPATH` entry resolves against
//! the run's working directory (CPython would resolve it against `/`), and
//! `open("/dev/null")` gives an empty, write-discarding file (WASI has no `/dev`;
//! `os.open` of it still fails).
//! pytest runs with `-p no:cacheprovider -p no:faulthandler --capture=sys` (the cache
//! needs `os.umask`, the others `os.dup`); its `tmp_path` / `tmpdir` fixtures need
//! `os.getuid` and are unavailable. `tests/pytest.rs`
//! (`pytest_runs_with_the_documented_flags_and_each_flag_is_needed`) checks this with
//! pytest 9.2.0, the wheels pinned in `scripts/fetch-wasm-pytest.sh`: the session works
//! with the three flags and fails without each of them.
//!
//! ## Compiled modules
//!
//! Compiling CPython takes seconds, so compiled modules are cached on disk in
//! [`WasmConfig::cache_dir`] (keyed by module sha256 and the engine's compatibility hash,
//! written atomically; see [`compile`] for why loading them is sound) and kept in memory
//! for every run of one backend.
//!
//! ## Workspaces
//!
//! Each sandbox is `<workspace_root>/<run id>-<random>/` (a core
//! [`SandboxDir`](crownest_core::hostdir::SandboxDir): built under `.creating-` and renamed
//! into place complete) with `workspace/` (extracted by
//! [`SandboxDir::materialize`](crownest_core::hostdir::SandboxDir::materialize): the core
//! extractor's staging directory renamed into place), the `crownest-sandbox.json` marker
//! (run id, owner process, keep-until) outside the workspace, and CPython's
//! `python/sitecustomize.py`. `destroy` removes the directory through a tombstone;
//! `sweep_orphans` is the core host-directory sweep: directories whose owner process is gone
//! and whose run is not live, kept ones past their keep-until, `.creating-` directories of
//! a builder that died.

pub mod compile;
mod config;
mod error;
mod guest;
mod limits;
mod modules;
mod output;
mod sandbox;
mod template;

mod backend;

pub use backend::{Preloaded, WasmBackend};
pub use compile::ModuleSource;
pub use config::WasmConfig;
pub use error::WasmError;
pub use guest::TRAP_SIGNAL;
pub use modules::Interpreter;
pub use sandbox::WasmSandbox;
pub use template::{WasmModule, WasmTemplate};

/// The registered backend name ([`crownest_core::SandboxBackend::name`]).
pub const BACKEND: &str = "wasm";

/// What CPython-on-WASI programs cannot do here, one line each (shown by `crownest doctor`;
/// explained in the crate docs).
pub const LIMITATIONS: &[&str] = &[
    "no threads: threading.Thread.start raises RuntimeError",
    "no processes: subprocess, os.fork, os.exec* are unavailable",
    "no os.dup: pytest needs --capture=sys and -p no:faulthandler",
    "no os.umask: pytest needs -p no:cacheprovider",
    "no users: os.getuid & co. are missing (pytest's tmp_path/tmpdir fail)",
    "no signals, no sockets; node is QuickJS (no npm, no Node built-ins)",
    "relative PYTHONPATH entries resolve against the working directory; open('/dev/null') works, os.open of it does not",
];

/// The wasmtime version this crate is built against (pinned in the workspace).
pub const WASMTIME_VERSION: &str = "48.0.8";
