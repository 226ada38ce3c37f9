//! [`ProcessBackend`] (the [`SandboxBackend`]) and [`ProcessSandbox`] (the [`Sandbox`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crownest_core::archive::{self, ExtractPolicy, ExtractSummary};
use crownest_core::artifact::{ArtifactFailure, CollectedArtifact};
use crownest_core::backend::ProgressFn;
use crownest_core::run::RunOwner;
use crownest_core::{
    Capabilities, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus, IsolationReport,
    KillSignal, Network, OutputStream, Result, RunId, Sandbox, SandboxBackend, SandboxSpec,
    TemplateIdentity, TemplateInfo, Timestamp,
};
use tokio::sync::{OnceCell, watch};

use crate::cgroup::Cgroup;
use crate::config::ProcessConfig;
use crate::containment::{self, Applied, Init, Probe, Tree};
use crate::error::{BACKEND, ProcessError};
use crate::marker::Marker;
use crate::output::{PumpEnd, pump};
use crate::probe_cache::{self, MemCache};
use crate::spawn::{ChildHook, HookMode, Reports, RlimitPlan};
use crate::template::{self, PYTHON_NODE, Resolved};
use crate::workspace;

#[derive(Debug)]
struct BackendInner {
    config: ProcessConfig,
    probe: Mutex<ProbeState>,
    /// Held while re-probing after a spawn failure (one re-probe at a time).
    reprobe: tokio::sync::Mutex<()>,
    template: OnceCell<Resolved>,
}

#[derive(Debug)]
struct ProbeState {
    current: Arc<Probe>,
    /// `current` came from a cache (memory or disk), not from a probe by this backend.
    cached: bool,
    /// A spawn failure already made this backend re-probe (it does so at most once).
    reprobed: bool,
}

impl BackendInner {
    fn probe(&self) -> Arc<Probe> {
        self.probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// After a spawn failed with the containment of `used`: when that came from the cache
    /// and was not re-probed yet, probes again (once per backend), stores the result in
    /// the caches and returns it with a note for the isolation report; when another
    /// sandbox already re-probed, returns the newer result. `None`: nothing to retry.
    async fn reprobe_after(
        &self,
        used: &Arc<Probe>,
        failure: &str,
    ) -> Option<(Arc<Probe>, String)> {
        let _one = self.reprobe.lock().await;
        {
            let st = self.probe.lock().unwrap_or_else(|p| p.into_inner());
            if !Arc::ptr_eq(&st.current, used) {
                let note = format!(
                    "the cached containment probe ({}) failed at spawn ({failure}); re-probed: {}",
                    used.applied.name(),
                    st.current.applied.name()
                );
                return Some((st.current.clone(), note));
            }
            if !st.cached || st.reprobed {
                return None;
            }
        }
        let config = self.config.clone();
        let fresh = tokio::task::spawn_blocking(move || containment::probe(&config)).await;
        let mut st = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        st.reprobed = true;
        let fresh = match fresh {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "process backend: re-probing the containment after a spawn failure failed");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "process backend: the containment re-probe task failed");
                return None;
            }
        };
        let note = format!(
            "the cached containment probe ({}) failed at spawn ({failure}); re-probed: {}",
            used.applied.name(),
            fresh.applied.name()
        );
        tracing::warn!(%note, "process backend: containment re-probed");
        let key = probe_cache::Key::current(&self.config);
        probe_cache::store(MemCache::global(), &self.config.root, &key, &fresh);
        st.current = fresh.clone();
        st.cached = false;
        Some((fresh, note))
    }
}

/// Runs commands as host processes. **Not a security boundary**: see the crate docs.
///
/// Cheap to clone. Construct with [`ProcessBackend::new`], which probes the containment
/// once per boot, user, kernel and configuration: the result is cached in memory and in
/// `<root>/.containment-probe.json` (see the crate docs).
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    inner: Arc<BackendInner>,
}

impl ProcessBackend {
    /// Creates the backend: makes the sandbox root (mode 0700, must be owned by this user)
    /// and probes which containment works here ([`crate::Containment`]). A containment
    /// asked for explicitly that does not work is an error; `Auto` always succeeds (at
    /// worst with the process group).
    pub fn new(config: ProcessConfig) -> Result<Self> {
        workspace::ensure_root(&config.root).map_err(|e| ProcessError::Root {
            path: config.root.display().to_string(),
            message: e.to_string(),
        })?;
        let key = probe_cache::Key::current(&config);
        let (probe, source) = probe_cache::lookup(MemCache::global(), &config.root, &key, || {
            containment::probe(&config)
        })
        .map_err(ProcessError::Containment)?;
        if source == probe_cache::Source::Fresh && !probe.notes.is_empty() {
            tracing::info!(
                containment = probe.applied.name(),
                notes = %probe.notes.join("; "),
                "process backend: stronger containment unavailable"
            );
        }
        Ok(Self {
            inner: Arc::new(BackendInner {
                config,
                probe: Mutex::new(ProbeState {
                    current: probe,
                    cached: source.cached(),
                    reprobed: false,
                }),
                reprobe: tokio::sync::Mutex::new(()),
                template: OnceCell::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ProcessConfig {
        &self.inner.config
    }

    /// The containment in force: `pid_namespace`, `cgroup` or `process_group`.
    pub fn containment(&self) -> &'static str {
        self.inner.probe().applied.name()
    }

    /// Why stronger containments were not used (empty when the first choice worked).
    pub fn containment_notes(&self) -> Vec<String> {
        self.inner.probe().notes.clone()
    }

    async fn template(&self) -> &Resolved {
        self.inner
            .template
            .get_or_init(|| template::resolve(&self.inner.config.path))
            .await
    }
}

#[async_trait]
impl SandboxBackend for ProcessBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let probe = self.inner.probe();
        let applied = &probe.applied;
        Capabilities {
            network_isolation: matches!(applied, Applied::PidNamespace { network: true, .. }),
            memory_limit: false,
            pids_limit: false,
            filesystem_isolation: false,
            process_tree_kill: applied.kills_whole_tree(),
            keep_sandbox: true,
            non_root: !rustix::process::geteuid().is_root(),
            security_boundary: false,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(vec![self.template().await.info.clone()])
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        if spec.template != PYTHON_NODE {
            return Err(Error::invalid(
                "template",
                format!(
                    "unknown template {:?}; the process backend offers {PYTHON_NODE:?}",
                    spec.template
                ),
            ));
        }
        let resolved = self.template().await;
        if !resolved.info.available {
            return Err(Error::invalid(
                "template",
                format!(
                    "{PYTHON_NODE} is unavailable on this host: {}",
                    resolved.info.reason.as_deref().unwrap_or("unknown reason")
                ),
            ));
        }
        let identity = resolved.identity();
        let id = format!("{}-{:08x}", spec.run_id, rand::random::<u32>());
        let dir = self.inner.config.root.join(&id);
        let marker = Marker {
            schema: Marker::SCHEMA.into(),
            run_id: spec.run_id.to_string(),
            instance: spec.instance.clone(),
            owner: spec.owner.clone(),
            created: Timestamp::now(),
            keep_until: None,
            processes: None,
        };
        // Built under a name that says who is building it, then renamed into place: a
        // creator killed half-way leaves `.creating-<pid>-<start>-<id>`, which the sweep
        // removes once that process is gone, never a sandbox directory without a marker.
        let building = self.inner.config.root.join(format!(
            "{CREATING}{}-{}-{id}",
            spec.owner.pid,
            spec.owner.pid_start.unwrap_or(0)
        ));
        let make = {
            let (dir, building) = (dir.clone(), building.clone());
            let marker = marker.clone();
            move || -> std::io::Result<()> {
                workspace::ensure_root(dir.parent().unwrap_or(Path::new("/")))?;
                std::fs::DirBuilder::new().mode(0o700).create(&building)?;
                marker.write(&building)?;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(building.join("tmp"))?;
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(building.join("workspace"))?;
                std::fs::rename(&building, &dir)
            }
        };
        if let Err(e) = make() {
            let _ = crownest_core::hostdir::remove_tree(&building);
            return Err(Error::io(
                format!("creating sandbox directory {}", dir.display()),
                e,
            ));
        }
        Ok(Box::new(ProcessSandbox {
            id,
            dir,
            backend: self.inner.clone(),
            spec: spec.clone(),
            identity,
            state: Mutex::new(State {
                marker,
                tree: None,
                destroyed: false,
                execs: 0,
                probe: self.inner.probe(),
                reprobe_note: None,
            }),
            exec_lock: tokio::sync::Mutex::new(()),
        }))
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let root = self.inner.config.root.clone();
        let live: Vec<String> = live.iter().map(ToString::to_string).collect();
        tokio::task::spawn_blocking(move || sweep(&root, &live))
            .await
            .map_err(|e| Error::from(ProcessError::Task(e.to_string())))?
    }
}

/// Name prefix of a sandbox directory being built: `.creating-<pid>-<start ticks>-<id>`.
const CREATING: &str = ".creating-";
/// The owner encoded in a `.creating-<pid>-<start>-<id>` name.
fn creator_of(name: &str) -> Option<RunOwner> {
    let rest = name.strip_prefix(CREATING)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    Some(RunOwner {
        instance: String::new(),
        pid,
        pid_start: (start != 0).then_some(start),
    })
}

/// Removes orphaned sandbox directories under `root` (see [`Marker::is_orphan`]) after
/// killing what they left running, half-built ones whose builder is gone, half-removed ones,
/// and stale extraction staging directories.
fn sweep(root: &Path, live: &[String]) -> Result<Vec<String>> {
    let now = Timestamp::now();
    let mut swept = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(Error::io(format!("listing {}", root.display()), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(".crownest-staging-") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
            if stale {
                let _ = crownest_core::hostdir::remove_tree(&path);
            }
            continue;
        }
        if name.starts_with(crownest_core::hostdir::TOMBSTONE_PREFIX) {
            // Garbage whoever was removing it; removing it twice at once is harmless.
            let _ = crownest_core::hostdir::remove_tree(&path);
            continue;
        }
        if name.starts_with(CREATING) {
            // Nothing ran in it yet (the command starts after the rename).
            if creator_of(&name).is_some_and(|owner| !owner.is_alive()) {
                let _ = crownest_core::hostdir::remove_tree(&path);
            }
            continue;
        }
        let Ok(marker) = Marker::read(&path) else {
            continue;
        };
        if !marker.is_orphan(live, now) {
            continue;
        }
        if let Some(p) = &marker.processes {
            p.kill_leftovers();
        }
        match crownest_core::hostdir::remove_via_tombstone(&path) {
            Ok(()) => swept.push(name),
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "sweeping an orphaned sandbox failed")
            }
        }
    }
    Ok(swept)
}

#[derive(Debug)]
struct State {
    marker: Marker,
    tree: Option<Arc<Tree>>,
    destroyed: bool,
    execs: u64,
    /// The containment probe this sandbox uses (the backend's at creation; replaced when a
    /// spawn failure made the backend re-probe).
    probe: Arc<Probe>,
    /// Set when that happened (reported in the isolation details).
    reprobe_note: Option<String>,
}

/// One sandbox: a directory `<root>/<run id>-<random>/` with `workspace/` (the command's
/// `/workspace`, also its `HOME`), `tmp/` (its `TMPDIR`) and a marker file.
#[derive(Debug)]
pub struct ProcessSandbox {
    id: String,
    dir: PathBuf,
    backend: Arc<BackendInner>,
    spec: SandboxSpec,
    identity: TemplateIdentity,
    state: Mutex<State>,
    exec_lock: tokio::sync::Mutex<()>,
}

/// Why a spawn failed.
struct SpawnError {
    message: String,
    /// The failure may come from the containment (the child hook or the cgroup), not from
    /// the request (program, cwd).
    containment: bool,
}

impl SpawnError {
    fn request(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            containment: false,
        }
    }
}

/// Kills the command's processes if `exec` is dropped before it finished.
struct KillOnDrop(Option<Arc<Tree>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            tree.signal(KillSignal::Kill);
        }
    }
}

fn wait_status(raw: i32) -> ExitStatus {
    if libc::WIFEXITED(raw) {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Exited(1)
    }
}

impl ProcessSandbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    /// The sandbox directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn probe(&self) -> Arc<Probe> {
        self.state().probe.clone()
    }

    fn applied(&self) -> Applied {
        self.probe().applied.clone()
    }

    fn rlimits(&self) -> RlimitPlan {
        let l = &self.spec.limits;
        RlimitPlan {
            open_files: Some(l.open_files),
            file_size: Some(l.artifact_bytes_each.max(l.extracted_bytes)),
        }
    }

    fn hook_mode_for(&self, applied: &Applied) -> HookMode {
        match applied.clone() {
            Applied::PidNamespace { user, network } => HookMode::Namespace {
                user,
                network: network && self.spec.network == Network::None,
            },
            Applied::Cgroup { .. } => HookMode::Cgroup,
            Applied::ProcessGroup => HookMode::ProcessGroup,
        }
    }

    fn write_marker(&self, f: impl FnOnce(&mut Marker)) -> std::io::Result<()> {
        let marker = {
            let mut st = self.state();
            f(&mut st.marker);
            st.marker.clone()
        };
        if self.dir.exists() {
            marker.write(&self.dir)
        } else {
            Ok(())
        }
    }

    fn env(&self, request: &ExecRequest) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_owned(), self.backend.config.path.clone());
        env.insert("HOME".to_owned(), self.workspace().display().to_string());
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        env.insert(
            "TMPDIR".to_owned(),
            self.dir.join("tmp").display().to_string(),
        );
        // Plain settings and secrets alike: this backend hands the command its environment
        // directly and records neither anywhere.
        env.extend(request.command_env());
        env
    }

    /// Spawns the command. When that fails in a way the containment may cause and the
    /// containment came from the probe cache, the backend re-probes once and the spawn is
    /// retried with the new result (reported in the isolation details). `Err(message)` is a
    /// spawn failure.
    async fn spawn_with_fallback(
        &self,
        request: &ExecRequest,
    ) -> std::result::Result<(tokio::process::Child, Arc<Tree>, Option<OwnedFd>, Reports), String>
    {
        let used = self.probe();
        let first = match self.spawn(request, &used.applied) {
            Ok(s) => return Ok(s),
            Err(e) if !e.containment => return Err(e.message),
            Err(e) => e.message,
        };
        let Some((fresh, note)) = self.backend.reprobe_after(&used, &first).await else {
            return Err(first);
        };
        {
            let mut st = self.state();
            st.probe = fresh.clone();
            st.reprobe_note = Some(note);
        }
        self.spawn(request, &fresh.applied)
            .map_err(|e| format!("{first}; after re-probing the containment: {}", e.message))
    }

    /// Spawns the command under `applied`.
    fn spawn(
        &self,
        request: &ExecRequest,
        applied: &Applied,
    ) -> std::result::Result<(tokio::process::Child, Arc<Tree>, Option<OwnedFd>, Reports), SpawnError>
    {
        let argv0 = request
            .argv
            .first()
            .ok_or_else(|| SpawnError::request("empty argv"))?;
        let (cwd_fd, cwd_path) =
            workspace::open_cwd(&self.workspace(), &request.cwd).map_err(SpawnError::request)?;
        let env = self.env(request);
        let path_var = env.get("PATH").map_or("", String::as_str);
        let program =
            workspace::resolve_program(argv0, path_var, &cwd_path).map_err(SpawnError::request)?;
        let mode = self.hook_mode_for(applied);
        let (report_r, report_w) = match mode {
            HookMode::Namespace { .. } => {
                let (r, w) = rustix::pipe::pipe_with(
                    rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
                )
                .map_err(|e| {
                    SpawnError::request(format!("creating the report pipe failed: {e}"))
                })?;
                (Some(r), Some(w))
            }
            _ => (None, None),
        };
        let cgroup = match applied {
            Applied::Cgroup { parent } => {
                let n = self.state().execs;
                Some(
                    Cgroup::create(parent, &format!("{}-{n}", self.id)).map_err(|e| {
                        SpawnError {
                            message: format!(
                                "creating the cgroup under {} failed: {e}",
                                parent.display()
                            ),
                            containment: true,
                        }
                    })?,
                )
            }
            _ => None,
        };
        let procs = cgroup.as_ref().and_then(|c| {
            std::ffi::CString::new(c.procs_file().as_os_str().as_encoded_bytes()).ok()
        });
        let hook = ChildHook::new(
            mode,
            cwd_fd.as_raw_fd(),
            report_w.as_ref().map_or(-1, |w| w.as_raw_fd()),
            self.rlimits(),
            procs,
            false,
        );
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg0(argv0)
            .args(&request.argv[1..])
            .env_clear()
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the hook makes only async-signal-safe calls on data computed above.
        unsafe {
            cmd.pre_exec(move || hook.run());
        }
        let spawned = cmd.spawn();
        drop(report_w);
        drop(cwd_fd);
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                return Err(SpawnError {
                    message: format!("starting {argv0:?} ({}) failed: {e}", program.display()),
                    // The child hook (namespaces, cgroup, rlimits) or the exec itself.
                    containment: true,
                });
            }
        };
        let leader = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let mut reports = Reports::default();
        if let Some(r) = &report_r {
            reports.parse(&read_available(r));
        }
        let init = reports.init_pid.and_then(|pid| Init::open(pid, leader));
        let tree = Arc::new(Tree::new(applied.clone(), leader, init, cgroup));
        Ok((child, tree, report_r, reports))
    }

    fn isolation_details(&self) -> BTreeMap<String, String> {
        let r = self.rlimits();
        let mut d = BTreeMap::new();
        d.insert(
            "rlimits".into(),
            format!(
                "nofile={} core=0 fsize={}",
                r.open_files.unwrap_or(0),
                r.file_size.unwrap_or(0)
            ),
        );
        d.insert(
            "env".into(),
            "cleared; PATH, HOME, LANG, TMPDIR + the spec's env".into(),
        );
        d.insert("stdin".into(), "null".into());
        d.insert(
            "filesystem".into(),
            "host filesystem visible (not isolated)".into(),
        );
        d.insert("sandboxDir".into(), self.dir.display().to_string());
        if let Applied::PidNamespace { user, .. } = self.applied() {
            d.insert("userNamespace".into(), user.to_string());
        }
        if let Applied::Cgroup { parent } = self.applied() {
            d.insert("cgroupParent".into(), parent.display().to_string());
        }
        let (probe, reprobe_note) = {
            let st = self.state();
            (st.probe.clone(), st.reprobe_note.clone())
        };
        if !probe.notes.is_empty() {
            d.insert("containmentFallback".into(), probe.notes.join("; "));
        }
        if let Some(note) = reprobe_note {
            d.insert("containmentReprobed".into(), note);
        }
        d
    }
}

fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn isolation(&self) -> IsolationReport {
        let network = match (self.spec.network, self.applied()) {
            (Network::Enabled, _) => "enabled",
            (Network::None, Applied::PidNamespace { network: true, .. }) => "none",
            (Network::None, _) => "not_isolated",
        };
        IsolationReport {
            backend: BACKEND.into(),
            network: network.into(),
            memory_bytes: None,
            pids: None,
            process_containment: self.applied().name().into(),
            user: Some(format!("uid {}", rustix::process::geteuid().as_raw())),
            security_boundary: false,
            details: self.isolation_details(),
        }
    }

    fn identity(&self) -> TemplateIdentity {
        self.identity.clone()
    }

    async fn materialize(
        &self,
        archive: Box<dyn Read + Send>,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        if self.state().destroyed {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        let ws = self.workspace();
        // create() made an empty placeholder; the extractor wants to create the directory
        // itself (staging + rename).
        match std::fs::remove_dir(&ws) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                return Err(ProcessError::AlreadyMaterialized(self.id.clone()).into());
            }
            Err(e) => return Err(Error::io(format!("preparing {}", ws.display()), e)),
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let policy = *policy;
        let dest = ws.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut last = Instant::now();
            archive::extract(archive, &dest, &policy, &mut |p| {
                if last.elapsed() >= Duration::from_millis(20) {
                    last = Instant::now();
                    let _ = tx.send(p);
                }
            })
        });
        tokio::pin!(task);
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                Some(p) = rx.recv() => progress(p),
            }
        };
        while let Ok(p) = rx.try_recv() {
            progress(p);
        }
        let result = result
            .map_err(|e| Error::from(ProcessError::Task(e.to_string())))
            .and_then(|r| r);
        if result.is_err() && !ws.exists() {
            let _ = std::fs::DirBuilder::new().mode(0o755).create(&ws);
        }
        result
    }

    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome> {
        let Ok(_exclusive) = self.exec_lock.try_lock() else {
            return Err(ProcessError::Busy(self.id.clone()).into());
        };
        if self.state().destroyed {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        // `reports` already holds what arrived during the spawn (a fast command may have
        // ended by then); more records are read once the leader exited.
        let (mut child, tree, report, mut reports) = match self.spawn_with_fallback(request).await {
            Ok(s) => s,
            Err(message) => return Ok(ExecOutcome::new(ExitStatus::SpawnFailed(message))),
        };
        {
            let mut st = self.state();
            st.tree = Some(tree.clone());
            st.execs += 1;
        }
        let mut guard = KillOnDrop(Some(tree.clone()));
        if let Err(e) = self.write_marker(|m| m.processes = Some(tree.record())) {
            tracing::warn!(sandbox = %self.id, error = %e, "recording the command's processes in the marker failed");
        }
        sink.started().await;

        let cfg = &self.backend.config;
        let (exit_tx, exit_rx) = watch::channel(false);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out = async {
            match stdout {
                Some(r) => {
                    pump(
                        r,
                        OutputStream::Stdout,
                        sink,
                        exit_rx.clone(),
                        cfg.drain_timeout,
                    )
                    .await
                }
                None => PumpEnd::Eof,
            }
        };
        let err = async {
            match stderr {
                Some(r) => {
                    pump(
                        r,
                        OutputStream::Stderr,
                        sink,
                        exit_rx.clone(),
                        cfg.drain_timeout,
                    )
                    .await
                }
                None => PumpEnd::Eof,
            }
        };
        let tracks = matches!(self.applied(), Applied::ProcessGroup);
        let wait = async {
            let mut scan = tokio::time::interval(Duration::from_millis(50));
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    _ = scan.tick(), if tracks => tree.scan(),
                }
            };
            tree.set_reaped();
            // Whatever the command left behind dies now, so it cannot hold the pipes.
            let survivors = tree.finish(cfg.kill_confirm_timeout).await;
            let _ = exit_tx.send(true);
            (status, survivors)
        };
        let (out_end, err_end, (status, mut survivors)) = tokio::join!(out, err, wait);
        guard.0 = None;
        if let Some(cg) = tree.cgroup()
            && survivors.is_empty()
        {
            let _ = cg.remove();
        }
        for (end, name) in [(out_end, "stdout"), (err_end, "stderr")] {
            if end == PumpEnd::Abandoned {
                survivors.push(format!(
                    "an unknown process still held the command's {name} open {} ms after it exited",
                    cfg.drain_timeout.as_millis()
                ));
            }
        }
        let status = status.map_err(|e| Error::io("waiting for the command", e))?;
        if let Some(r) = &report {
            reports.parse(&read_available(r));
        }
        let status = match (reports.command_status, reports.init_status) {
            (Some(raw), _) => wait_status(raw),
            (None, Some(raw)) if libc::WIFSIGNALED(raw) => {
                ExitStatus::Signaled(libc::WTERMSIG(raw))
            }
            _ => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Exited(code),
                (None, Some(sig)) => ExitStatus::Signaled(sig),
                (None, None) => ExitStatus::Exited(1),
            },
        };
        let status = match status {
            ExitStatus::Signaled(sig) if sig == libc::SIGXFSZ => {
                ExitStatus::LimitExceeded(format!(
                    "the command wrote a file over the {}-byte file size limit (SIGXFSZ)",
                    self.rlimits().file_size.unwrap_or(0)
                ))
            }
            s => s,
        };
        Ok(ExecOutcome { status, survivors })
    }

    async fn signal(&self, signal: KillSignal) -> Result<()> {
        let tree = self.state().tree.clone();
        if let Some(tree) = tree {
            tree.signal(signal);
        }
        Ok(())
    }

    async fn collect_artifact(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure> {
        crownest_core::hostdir::collect_artifact(self.workspace(), path, max_bytes).await
    }

    async fn keep(&self, until: Timestamp) -> Result<()> {
        if self.state().destroyed {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        self.write_marker(|m| m.keep_until = Some(until))
            .map_err(|e| Error::io(format!("updating the marker of {}", self.dir.display()), e))
    }

    async fn destroy(&self) -> Result<()> {
        let tree = {
            let st = self.state();
            if st.destroyed {
                return Ok(());
            }
            st.tree.clone()
        };
        let mut survivors = Vec::new();
        if let Some(tree) = &tree {
            tree.signal(KillSignal::Kill);
            survivors = tree.finish(self.backend.config.kill_confirm_timeout).await;
            if let Some(cg) = tree.cgroup() {
                let _ = cg.remove();
            }
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || crownest_core::hostdir::remove_via_tombstone(&dir))
            .await
            .map_err(|e| Error::from(ProcessError::Task(e.to_string())))?
            .map_err(|source| ProcessError::Remove {
                path: self.dir.display().to_string(),
                source,
            })?;
        if self.dir.exists() {
            return Err(ProcessError::Remove {
                path: self.dir.display().to_string(),
                source: std::io::Error::other("the directory still exists after removal"),
            }
            .into());
        }
        if !survivors.is_empty() {
            return Err(ProcessError::Survivors {
                id: self.id.clone(),
                survivors: survivors.join(", "),
            }
            .into());
        }
        self.state().destroyed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_sweep_removes_half_built_and_half_removed_sandboxes_only_when_safe() {
        let root = tempfile::tempdir().unwrap();
        let me = RunOwner::current("t");
        // A builder that is gone (pid 0 never is a live process here), one that lives
        // (this process), and a half-removed sandbox.
        let dead = root.path().join(format!("{CREATING}0-0-run_x-1"));
        let alive = root.path().join(format!(
            "{CREATING}{}-{}-run_y-2",
            me.pid,
            me.pid_start.unwrap_or(0)
        ));
        let removing = root.path().join(format!(
            "{}run_z-3",
            crownest_core::hostdir::TOMBSTONE_PREFIX
        ));
        for d in [&dead, &alive, &removing] {
            std::fs::create_dir_all(d.join("workspace/sub")).unwrap();
        }
        assert_eq!(
            creator_of(&format!("{CREATING}12-34-run_a-b")).unwrap().pid,
            12
        );
        assert!(creator_of(".creating-x").is_none());
        sweep(root.path(), &[]).unwrap();
        assert!(!dead.exists());
        assert!(
            alive.exists(),
            "a sandbox being built by a live process is left alone"
        );
        assert!(!removing.exists());
    }
}
