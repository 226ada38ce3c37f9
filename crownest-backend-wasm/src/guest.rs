//! Running one guest: the WASI context (args, env, preopens, stdio), the store (limits,
//! epoch deadline), and the loop that streams output and stops the guest on request.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crownest_core::{ExecSink, ExitStatus, OutputStream};
use tokio::sync::{mpsc, watch};
use wasmtime::{InstancePre, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::WasmConfig;
use crate::compile::Runtime;
use crate::error::WasmError;
use crate::limits::{GuestLimiter, LimitHit};
use crate::modules::Interpreter;
use crate::output::{OutputChunk, SinkPipe};

/// Guest path of the workspace.
pub(crate) const WORKSPACE_GUEST_PATH: &str = "/workspace";
/// Guest path of the read-only directory holding CPython's `sitecustomize.py`.
pub(crate) const PYTHON_SITE_GUEST_PATH: &str = "/.crownest/python";

/// `Signaled` code reported when the guest trapped (a crash: unreachable, stack overflow,
/// out-of-bounds access...), like `SIGABRT`.
pub const TRAP_SIGNAL: i32 = 6;

/// The `sitecustomize.py` CPython imports at start-up (through `PYTHONPATH`): WASI
/// preview 1 programs start in `/`, so it moves CPython into the run's working directory,
/// then removes its own traces (`PYTHONPATH` restored, its directory off `sys.path`).
pub(crate) const PYTHON_SITECUSTOMIZE: &str = r#"# Written by crownest-backend-wasm. WASI preview 1 programs start in "/":
# this moves CPython into the run's working directory, then removes its own traces.
def _crownest_init():
    import os, sys
    cwd = os.environ.pop("CROWNEST_WASM_CWD", None)
    user_path = os.environ.pop("CROWNEST_WASM_PYTHONPATH", None)
    if user_path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = user_path
    while "/.crownest/python" in sys.path:
        sys.path.remove("/.crownest/python")
    if cwd:
        os.chdir(cwd)

_crownest_init()
del _crownest_init

# WASI has no /dev: `open(os.devnull)` (logging handlers, pytest's capture, tools that
# silence output) would fail. Opening /dev/null through `open`/`io.open` gives an empty,
# write-discarding file, as on a native host. `os.open("/dev/null")` still fails.
def _crownest_devnull():
    import builtins, io, os
    real_open = io.open

    class DevNull(io.RawIOBase):
        name = "/dev/null"
        def readable(self): return True
        def writable(self): return True
        def seekable(self): return True
        def seek(self, offset, whence=0): return 0
        def readinto(self, b): return 0
        def write(self, b): return len(b)

    def open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
             closefd=True, opener=None):
        try:
            target = os.fsdecode(file) if not isinstance(file, int) else None
        except TypeError:
            target = None
        if target != "/dev/null" or opener is not None:
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = DevNull()
        if "b" in mode:
            return raw if buffering == 0 else io.BufferedRandom(raw)
        text = io.TextIOWrapper(io.BufferedRandom(raw), encoding=encoding or "utf-8",
                                errors=errors, newline=newline)
        text.mode = mode
        return text

    builtins.open = io.open = open

_crownest_devnull()
del _crownest_devnull
"#;

/// What the store holds for one guest.
pub(crate) struct GuestState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: GuestLimiter,
}

/// One command to run.
pub(crate) struct GuestCommand<'a> {
    pub(crate) interpreter: Interpreter,
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a BTreeMap<String, String>,
    /// Host path of the workspace.
    pub(crate) workspace: &'a Path,
    /// Normalized relative cwd inside the workspace (`""` for the root).
    pub(crate) cwd: &'a str,
    /// Host path of that cwd (opened by the sandbox; preopened at `/`).
    pub(crate) host_cwd: &'a Path,
    /// Host directory holding `sitecustomize.py`.
    pub(crate) python_site: &'a Path,
    pub(crate) memory_bytes: u64,
    /// The backend's own deadline (a backstop behind the engine's kill ladder).
    pub(crate) backstop: Duration,
}

/// The WASI context: exactly these args and env, stdin closed, stdout/stderr into the
/// sink, the workspace preopened read-write at `/workspace`, the working directory also
/// at `/` (wasi-libc resolves relative paths against `/`), no sockets.
fn wasi_ctx(
    cmd: &GuestCommand<'_>,
    tx: &mpsc::UnboundedSender<OutputChunk>,
) -> Result<WasiP1Ctx, WasmError> {
    let mut b = WasiCtxBuilder::new();
    b.args(cmd.argv)
        .stdout(SinkPipe::new(OutputStream::Stdout, tx.clone()))
        .stderr(SinkPipe::new(OutputStream::Stderr, tx.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let guest_cwd = if cmd.cwd.is_empty() {
        WORKSPACE_GUEST_PATH.to_owned()
    } else {
        format!("{WORKSPACE_GUEST_PATH}/{}", cmd.cwd)
    };
    for (k, v) in cmd.env {
        if cmd.interpreter == Interpreter::Python && k == "PYTHONPATH" {
            continue;
        }
        b.env(k, v);
    }
    if cmd.interpreter == Interpreter::Python {
        let user = cmd.env.get("PYTHONPATH");
        // CPython resolves a relative entry against the directory it starts in, which is
        // `/` under WASI preview 1 (it would find `//x`, outside the workspace): resolve
        // them against the run's working directory here, as a native start would.
        let path = match user {
            Some(u) if !u.is_empty() => {
                format!(
                    "{PYTHON_SITE_GUEST_PATH}:{}",
                    resolve_search_path(u, &guest_cwd)
                )
            }
            _ => PYTHON_SITE_GUEST_PATH.to_owned(),
        };
        b.env("PYTHONPATH", path);
        if let Some(u) = user {
            b.env("CROWNEST_WASM_PYTHONPATH", u);
        }
        b.env("CROWNEST_WASM_CWD", &guest_cwd);
    }
    let host_cwd = cmd.host_cwd;
    let preopen = |e| WasmError::Engine {
        context: "preopening the workspace".into(),
        source: wasmtime::Error::into_boxed_dyn_error(e),
    };
    b.preopened_dir(cmd.workspace, WORKSPACE_GUEST_PATH, FsPerms::ReadWrite)
        .map_err(preopen)?;
    b.preopened_dir(host_cwd, "/", FsPerms::ReadWrite)
        .map_err(preopen)?;
    if cmd.interpreter == Interpreter::Python {
        b.preopened_dir(cmd.python_site, PYTHON_SITE_GUEST_PATH, FsPerms::ReadOnly)
            .map_err(preopen)?;
    }
    Ok(b.build_p1())
}

/// A `PYTHONPATH` value with each relative (or empty) entry made absolute against `cwd` and
/// every entry normalized (`.`, `..`, repeated `/`), as CPython's own start-up does natively.
pub(crate) fn resolve_search_path(value: &str, cwd: &str) -> String {
    value
        .split(':')
        .map(|entry| {
            if entry.starts_with('/') {
                normalize(entry)
            } else {
                normalize(&format!("{cwd}/{entry}"))
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Lexical normalization of an absolute guest path (never above `/`).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// How a guest run ended, before mapping to [`ExitStatus`].
enum End {
    Finished(wasmtime::Result<()>),
    Stopped(i32),
}

/// Runs the guest to its end, or until `stop` carries a signal number, streaming its
/// output into `sink` with backpressure. The store is dropped before this returns.
pub(crate) async fn run(
    runtime: &Runtime,
    pre: InstancePre<GuestState>,
    cmd: &GuestCommand<'_>,
    config: &WasmConfig,
    mut stop: watch::Receiver<Option<i32>>,
    sink: &dyn ExecSink,
) -> Result<ExitStatus, WasmError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<OutputChunk>();
    let wasi = wasi_ctx(cmd, &tx)?;
    drop(tx);
    let hit: LimitHit = LimitHit::default();
    let limiter = GuestLimiter::new(cmd.memory_bytes, config, hit.clone());
    let mut store = Store::new(&runtime.engine, GuestState { wasi, limiter });
    store.limiter(|s| &mut s.limiter);
    // Every epoch tick the guest yields to the executor (so the select below can stop it
    // even in a busy loop) or, once a stop was requested, traps.
    let stop_cb = stop.clone();
    store.epoch_deadline_callback(move |_| {
        if stop_cb.borrow().is_some() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);

    let instance = match pre.instantiate_async(&mut store).await {
        Ok(i) => i,
        Err(e) => {
            let limit = hit.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(what) = limit {
                sink.started().await;
                return Ok(ExitStatus::LimitExceeded(what));
            }
            return Err(WasmError::engine("instantiating the module")(e));
        }
    };
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(WasmError::engine("finding the WASI command's _start"))?;

    sink.started().await;
    // Boxed (not stack-pinned) so it can be dropped, store and all, before returning.
    let mut call = Box::pin(async move {
        let r = start.call_async(&mut store, ()).await;
        drop(store);
        r
    });
    let backstop = tokio::time::sleep(cmd.backstop);
    tokio::pin!(backstop);
    let end = loop {
        tokio::select! {
            biased;
            sig = async { stop.wait_for(Option::is_some).await.ok().and_then(|s| *s) } => {
                break End::Stopped(sig.unwrap_or(9));
            }
            r = &mut call => break End::Finished(r),
            Some(chunk) = rx.recv() => forward(sink, chunk).await,
            () = &mut backstop => break End::Stopped(9),
        }
    };
    // Dropping the call future drops the store (and the suspended guest with it).
    drop(call);
    while let Ok(chunk) = rx.try_recv() {
        forward(sink, chunk).await;
    }
    let limit = hit.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let stopped = *stop.borrow();
    Ok(match end {
        End::Stopped(sig) => ExitStatus::Signaled(sig),
        End::Finished(Ok(())) => ExitStatus::Exited(0),
        End::Finished(Err(e)) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                ExitStatus::Exited(exit.0)
            } else if let Some(what) = limit {
                ExitStatus::LimitExceeded(what)
            } else if let Some(sig) = stopped {
                ExitStatus::Signaled(sig)
            } else {
                let kind = e
                    .downcast_ref::<Trap>()
                    .map_or_else(|| "error".to_owned(), |t| format!("trap ({t})"));
                let msg = format!("crownest-wasm: the guest ended with a {kind}: {e:#}\n");
                sink.output(OutputStream::Stderr, msg.as_bytes()).await;
                ExitStatus::Signaled(TRAP_SIGNAL)
            }
        }
    })
}

async fn forward(sink: &dyn ExecSink, chunk: OutputChunk) {
    let OutputChunk { stream, data, ack } = chunk;
    sink.output(stream, &data).await;
    let _ = ack.send(());
}

#[cfg(test)]
mod search_path_tests {
    use super::resolve_search_path;

    #[test]
    fn relative_entries_resolve_against_the_working_directory() {
        let cwd = "/workspace/pkg";
        assert_eq!(resolve_search_path("src", cwd), "/workspace/pkg/src");
        assert_eq!(
            resolve_search_path(".:./lib::../z:/abs//x/./y", cwd),
            "/workspace/pkg:/workspace/pkg/lib:/workspace/pkg:/workspace/z:/abs/x/y"
        );
        assert_eq!(resolve_search_path("../../../..", cwd), "/");
    }
}
