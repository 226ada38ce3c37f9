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
use crownest_core::hostdir::{Marker, Removal, SandboxDir, WorkRoot};
use crownest_core::{
    Capabilities, Destroyed, Error, ExecOutcome, ExecRequest, ExecSink, ExitStatus,
    IsolationReport, KillSignal, Network, NetworkIsolation, OutputStream, Result, RunId, Sandbox,
    SandboxBackend, SandboxSpec, TemplateIdentity, TemplateInfo, Timestamp,
};
use tokio::sync::{OnceCell, watch};

use crate::BACKEND;
use crate::cgroup::Cgroup;
use crate::config::ProcessConfig;
use crate::containment::ProcessRecord;
use crate::containment::{self, Applied, Init, Probe, Tree};
use crate::error::ProcessError;
use crate::output::{PumpEnd, pump};
use crate::privilege::HostPrivilege;
use crate::probe_cache::{self, MemCache};
use crate::spawn::{ChildHook, HookMode, Reports, RlimitPlan};
use crate::template::{self, PYTHON_NODE, Resolved};
use crate::workspace;

#[derive(Debug)]
struct BackendInner {
    config: ProcessConfig,
    /// The private work root, opened once.
    root: WorkRoot,
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
        let root = WorkRoot::open(&config.root)?;
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
                root,
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
            network_access: true,
            memory_limit: false,
            pids_limit: false,
            filesystem_isolation: false,
            process_tree_kill: applied.kills_whole_tree(),
            keep_sandbox: true,
            non_root: !rustix::process::geteuid().is_root(),
            security_boundary: false,
            exit_signal: true,
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
        let marker = Marker::new(BACKEND, &spec.run_id, &spec.instance, spec.owner.clone());
        let root = self.inner.root.clone();
        let made = {
            let marker = marker.clone();
            tokio::task::spawn_blocking(move || {
                SandboxDir::create(&root, &marker, |d| {
                    d.mkdir("tmp", 0o700)?;
                    d.mkdir("workspace", 0o755)
                })
            })
            .await
            .map_err(|e| Error::from(ProcessError::Task(e.to_string())))??
        };
        let id = made.name().to_owned();
        let host = made.host_path();
        Ok(Box::new(ProcessSandbox {
            id,
            dir: made,
            host,
            backend: self.inner.clone(),
            spec: spec.clone(),
            identity,
            state: Mutex::new(State {
                marker,
                tree: None,
                destroyed: None,
                execs: 0,
                probe: self.inner.probe(),
                reprobe_note: None,
                privilege: None,
            }),
            exec_lock: tokio::sync::Mutex::new(()),
        }))
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let root = self.inner.root.clone();
        let live = live.to_vec();
        tokio::task::spawn_blocking(move || {
            crownest_core::hostdir::sweep(&root, BACKEND, &live, &mut |m| {
                if let Some(p) = processes(m) {
                    p.kill_leftovers();
                }
            })
        })
        .await
        .map_err(|e| Error::from(ProcessError::Task(e.to_string())))?
    }
}

/// The processes a sandbox's command last ran, as recorded in its marker's `state`.
fn processes(marker: &Marker) -> Option<ProcessRecord> {
    serde_json::from_value(marker.state.get("processes")?.clone()).ok()
}

#[derive(Debug)]
struct State {
    marker: Marker,
    tree: Option<Arc<Tree>>,
    /// Set by the first successful `destroy`.
    destroyed: Option<Destroyed>,
    execs: u64,
    /// The containment probe this sandbox uses (the backend's at creation; replaced when a
    /// spawn failure made the backend re-probe).
    probe: Arc<Probe>,
    /// Set when that happened (reported in the isolation details).
    reprobe_note: Option<String>,
    /// What the last spawned command held over the host (`None` before the first exec).
    privilege: Option<HostPrivilege>,
}

/// One sandbox: a directory `<root>/<run id>-<random>/` with `workspace/` (the command's
/// `/workspace`, also its `HOME`), `tmp/` (its `TMPDIR`) and a marker file.
#[derive(Debug)]
pub struct ProcessSandbox {
    id: String,
    /// The sandbox directory, opened once; everything goes through its descriptor.
    dir: SandboxDir,
    /// Where it is on the host (the command's `HOME`/`TMPDIR` are under it).
    host: PathBuf,
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

    /// The workspace through the sandbox's descriptor (valid in this process only).
    fn workspace(&self) -> PathBuf {
        self.dir.proc_path().join("workspace")
    }

    /// The sandbox directory on the host.
    pub fn dir(&self) -> &Path {
        &self.host
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
        if self.state().destroyed.is_some() {
            return Ok(());
        }
        self.dir.write_marker(&marker)
    }

    fn env(&self, request: &ExecRequest) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_owned(), self.backend.config.path.clone());
        env.insert(
            "HOME".to_owned(),
            self.host.join("workspace").display().to_string(),
        );
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        env.insert(
            "TMPDIR".to_owned(),
            self.host.join("tmp").display().to_string(),
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
        let privilege = hook.privilege();
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
        self.state().privilege = Some(privilege);
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
            "descriptors".into(),
            "only 0, 1, 2 inherited (every other descriptor is closed at exec)".into(),
        );
        d.insert(
            "filesystem".into(),
            "host filesystem visible (not isolated)".into(),
        );
        d.insert("sandboxDir".into(), self.host.display().to_string());
        if let Applied::PidNamespace { user, .. } = self.applied() {
            d.insert("userNamespace".into(), user.to_string());
        }
        if let Applied::Cgroup { parent } = self.applied() {
            d.insert("cgroupParent".into(), parent.display().to_string());
        }
        let (probe, reprobe_note, privilege) = {
            let st = self.state();
            (st.probe.clone(), st.reprobe_note.clone(), st.privilege)
        };
        // Before the first exec: what a spawn now would apply.
        let privilege = privilege.unwrap_or_else(|| {
            HostPrivilege::for_spawn(matches!(
                probe.applied,
                Applied::PidNamespace { user: true, .. }
            ))
        });
        d.insert("hostPrivilege".into(), privilege.describe());
        if privilege.no_new_privs() {
            d.insert("noNewPrivileges".into(), "true".into());
        }
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
            (Network::Enabled, _) => NetworkIsolation::Enabled,
            (Network::None, Applied::PidNamespace { network: true, .. }) => NetworkIsolation::None,
            (Network::None, _) => NetworkIsolation::NotIsolated,
        };
        IsolationReport {
            backend: BACKEND.into(),
            network,
            memory_bytes: None,
            pids: None,
            process_containment: self.applied().containment(),
            user: Some(format!("uid {}", rustix::process::geteuid().as_raw())),
            security_boundary: false,
            not_enforced: Vec::new(),
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
        if self.state().destroyed.is_some() {
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
            Err(source) => {
                return Err(ProcessError::Io {
                    context: format!("preparing {}", ws.display()),
                    source,
                }
                .into());
            }
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
        if self.state().destroyed.is_some() {
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
        let record = serde_json::to_value(tree.record()).unwrap_or_default();
        if let Err(e) = self.write_marker(|m| m.state = serde_json::json!({ "processes": record }))
        {
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
        let status = status.map_err(|source| ProcessError::Io {
            context: "waiting for the command".into(),
            source,
        })?;
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
        let workspace = self.dir.open_dir("workspace").map_err(|e| {
            ArtifactFailure::new(
                crownest_core::event::ArtifactErrorReason::NotFound,
                format!("{path:?}: the workspace cannot be opened: {e}"),
            )
        })?;
        crownest_core::hostdir::collect_artifact(Arc::new(workspace), path, max_bytes).await
    }

    async fn keep(&self, until: Timestamp) -> Result<()> {
        if self.state().destroyed.is_some() {
            return Err(ProcessError::Destroyed(self.id.clone()).into());
        }
        self.write_marker(|m| m.keep_until = Some(until))
            .map_err(|source| {
                Error::from(ProcessError::Io {
                    context: format!("updating the marker of {}", self.host.display()),
                    source,
                })
            })
    }

    async fn destroy(&self) -> Result<Destroyed> {
        let tree = {
            let st = self.state();
            if let Some(done) = st.destroyed {
                return Ok(done);
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
        let removal = self
            .dir
            .remove(self.backend.config.removal_wait)
            .await
            .map_err(|source| ProcessError::Remove {
                path: self.host.display().to_string(),
                source,
            })?;
        if !survivors.is_empty() {
            return Err(ProcessError::Survivors {
                id: self.id.clone(),
                survivors: survivors.join(", "),
            }
            .into());
        }
        let done = match removal {
            Removal::Done => Destroyed::Gone,
            Removal::Pending => Destroyed::RemovalPending,
        };
        self.state().destroyed = Some(done);
        Ok(done)
    }
}
