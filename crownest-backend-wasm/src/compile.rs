//! The wasmtime engine and the compiled-module cache: compile each module once per
//! machine, load it once per backend.
//!
//! Compiling `python-3.12.0.wasm` takes ~3 s (release) to ~40 s (debug build of wasmtime);
//! loading the precompiled artefact takes ~1 ms. So:
//!
//! * **on disk**: `<cache_dir>/<module sha256>-<engine hash>.cwasm`, where the engine hash
//!   is a sha256 over [`Engine::precompile_compatibility_hash`] (wasmtime version, compiler
//!   settings, target features). A sibling `.sha256` file records the digest of the
//!   artefact, checked before it is loaded. Files are written to a temporary name and
//!   renamed into place (atomic), under an exclusive `flock` on `<key>.lock` so parallel
//!   processes (test binaries, engines) compile a module once, not once each.
//! * **in memory**: one [`InstancePre`] per module per backend, shared by all its runs.
//!
//! # Safety of loading precompiled code
//!
//! [`Module::deserialize_file`] is `unsafe` because the file is trusted to be a wasmtime
//! artefact that wasmtime itself produced: a crafted file is native code that runs in
//! this process. The argument that this holds here:
//!
//! 1. only files named by our key in `cache_dir` are loaded; the key contains the sha256 of
//!    the pinned wasm module (pinned by `modules.lock` or by the host application that
//!    registered a template: the same rule, the file is hashed and compared before it is
//!    compiled) and the engine's compatibility hash, so an artefact of another module or
//!    another engine configuration is never picked up (wasmtime additionally refuses
//!    artefacts of another version or incompatible settings);
//! 2. every such file was written by this code from [`Engine::precompile_module`], through
//!    a temporary file renamed into place, so a reader never sees a partial file;
//! 3. the artefact's sha256 is recorded when it is written and checked before loading, so
//!    a truncated or corrupted file is recompiled, never loaded;
//! 4. `cache_dir` is created with mode 0700: it must be as trusted as the binary itself
//!    (whoever can write there can run code in this process). Do not point it at a
//!    directory other users can write.

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hasher;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::error::WasmError;
use crate::guest::GuestState;
use crate::modules::{VerifiedModule, sha256_file};

/// Feeds `Hash` data into sha256 (a stable digest, unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The engine of one backend, its linker, the epoch ticker and the loaded modules.
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<GuestState>,
    cache_dir: PathBuf,
    engine_hash: String,
    loaded: Mutex<HashMap<String, Arc<OnceCell<InstancePre<GuestState>>>>>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .field("engine_hash", &self.engine_hash)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// How a module was obtained (for benchmarks and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource {
    /// Already loaded by this backend.
    Memory,
    /// Loaded from the on-disk cache.
    DiskCache,
    /// Compiled now (and written to the cache).
    Compiled,
}

impl Runtime {
    /// An engine with epoch interruption, its WASI preview 1 linker, and a ticker thread
    /// that advances the epoch every `tick` until the runtime is dropped.
    pub(crate) fn new(cache_dir: PathBuf, tick: Duration) -> Result<Self, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine =
            Engine::new(&config).map_err(WasmError::engine("creating the wasmtime engine"))?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(WasmError::engine("adding WASI preview 1 to the linker"))?;
        let mut h = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let engine_hash = hex::encode(h.0.finalize())[..16].to_owned();

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("crownest-wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| WasmError::Io {
                context: "spawning the epoch ticker thread".into(),
                source: e,
            })?;
        Ok(Self {
            engine,
            linker,
            cache_dir,
            engine_hash,
            loaded: Mutex::new(HashMap::new()),
            ticker_stop,
        })
    }

    /// The ready-to-instantiate module, compiling or loading it at most once per backend.
    pub(crate) async fn instance_pre(
        &self,
        module: &VerifiedModule,
    ) -> Result<(InstancePre<GuestState>, ModuleSource), WasmError> {
        let cell = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.sha256.clone())
            .or_default()
            .clone();
        let mut source = ModuleSource::Memory;
        let pre = cell
            .get_or_try_init(|| async {
                let (m, s) = self.load(module).await?;
                source = s;
                self.linker
                    .instantiate_pre(&m)
                    .map_err(WasmError::engine(format!("linking {}", module.file())))
            })
            .await?;
        Ok((pre.clone(), source))
    }

    /// The cache path of a module.
    pub(crate) fn cache_path(&self, module: &VerifiedModule) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}.cwasm", module.sha256, self.engine_hash))
    }

    async fn load(&self, module: &VerifiedModule) -> Result<(Module, ModuleSource), WasmError> {
        let engine = self.engine.clone();
        let cache_dir = self.cache_dir.clone();
        let path = self.cache_path(module);
        let module = module.clone();
        tokio::task::spawn_blocking(move || load_blocking(&engine, &cache_dir, &path, &module))
            .await
            .map_err(|e| WasmError::Io {
                context: "joining the module loader".into(),
                source: std::io::Error::other(e),
            })?
    }
}

fn load_blocking(
    engine: &Engine,
    cache_dir: &Path,
    path: &Path,
    module: &VerifiedModule,
) -> Result<(Module, ModuleSource), WasmError> {
    let io = |context: String| move |source| WasmError::Io { context, source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .map_err(io(format!("creating {}", cache_dir.display())))?;
    if let Some(m) = try_cached(engine, path) {
        return Ok((m, ModuleSource::DiskCache));
    }
    // One compiler per key across processes; re-check after getting the lock.
    let lock_path = path.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        WasmError::Io {
            context: format!("locking {}", lock_path.display()),
            source: e.into(),
        }
    })?;
    if let Some(m) = try_cached(engine, path) {
        return Ok((m, ModuleSource::DiskCache));
    }
    let wasm =
        std::fs::read(&module.path).map_err(io(format!("reading {}", module.path.display())))?;
    let digest = hex::encode(Sha256::digest(&wasm));
    if digest != module.sha256 {
        return Err(WasmError::ModuleChanged {
            path: module.path.clone(),
            expected: module.sha256.clone(),
            actual: digest,
        });
    }
    let compiled = engine
        .precompile_module(&wasm)
        .map_err(WasmError::engine(format!("compiling {}", module.file())))?;
    let artefact_digest = hex::encode(Sha256::digest(&compiled));
    write_atomically(
        &path.with_extension("cwasm.sha256"),
        artefact_digest.as_bytes(),
    )
    .and_then(|()| write_atomically(path, &compiled))
    .map_err(io(format!("writing {}", path.display())))?;
    // SAFETY: `compiled` was produced just now by `precompile_module` of this engine.
    let m = unsafe { Module::deserialize(engine, &compiled) }.map_err(WasmError::engine(
        format!("loading the compiled {}", module.file()),
    ))?;
    Ok((m, ModuleSource::Compiled))
}

/// Loads a cached artefact if it exists and its recorded digest matches; removes a bad one.
fn try_cached(engine: &Engine, path: &Path) -> Option<Module> {
    let sum_path = path.with_extension("cwasm.sha256");
    let recorded = std::fs::read_to_string(&sum_path).ok()?;
    let actual = sha256_file(path).ok()?;
    if recorded.trim() != actual {
        tracing::warn!(path = %path.display(), "compiled module does not match its recorded digest; recompiling");
        let _ = std::fs::remove_file(path);
        return None;
    }
    // SAFETY: see the module docs: the file is in our cache dir under our key, was written
    // by `load_blocking` from `Engine::precompile_module`, renamed into place atomically,
    // and its digest matches the one recorded when it was written.
    match unsafe { Module::deserialize_file(engine, path) } {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cached module unusable; recompiling");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
