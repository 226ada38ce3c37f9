//! [`FakeBackend`]: a scripted backend for testing the engine's own logic (feature
//! `testing`). It runs no process: each argv element is one step of a script.
//!
//! | step | effect |
//! |---|---|
//! | `out:TEXT` / `err:TEXT` | writes TEXT and a newline to stdout / stderr |
//! | `outbytes:N` | writes N bytes of `x` to stdout, in 64 KiB pieces |
//! | `bin` | writes bytes that are not UTF-8 to stdout |
//! | `env:NAME` | prints the value of NAME (plain or secret), or `<unset>` |
//! | `cwd` | prints `/workspace/<cwd>` |
//! | `cat:PATH` | prints a workspace file (from the archive or a `write:` step) |
//! | `stdin` | prints `0` (stdin is closed) |
//! | `write:PATH=CONTENT` | creates a workspace file |
//! | `link:PATH=TARGET` | creates a symlink |
//! | `fifo:PATH` | creates a fifo |
//! | `ls` | prints the names in the working directory, sorted, one per line |
//! | `tryread:PATH` | prints `OPENED <content>` for a workspace file, else `denied` |
//! | `die:N` | ends as killed by signal N |
//! | `sleep:MS` | sleeps (SIGTERM/SIGKILL end it) |
//! | `hang` | sleeps forever (SIGTERM/SIGKILL end it) |
//! | `ignore-term` | later SIGTERMs are ignored |
//! | `stuck` | later SIGKILLs are ignored too (only destroy ends it) |
//! | `exit:N` | exits with N |
//! | `oom` | ends as `LimitExceeded` |
//! | `crash` | `exec` returns an error (sandbox failure) |
//!
//! The first element must be `fake`, and the cwd an existing directory of the workspace;
//! anything else is `SpawnFailed`. A directory artifact is a tar of its files. Failures of
//! `create`/`destroy` are injected with [`FakeBackend::fail_create`] and friends.
//!
//! Files: this one (the backend, its sandboxes, their workspace and artifacts),
//! `script.rs` (the step interpreter behind `exec`), `archives.rs` (tar.gz builders).

mod archives;
mod script;

pub use archives::{descriptor_of, tar_gz, tar_gz_raw_entries, tar_gz_raw_name};

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::archive::{self, ExtractPolicy, ExtractSummary};
use crate::artifact::{ArtifactFailure, CollectedArtifact};
use crate::backend::{
    Capabilities, Destroyed, ExecOutcome, ExecRequest, ExecSink, IsolationReport, KillSignal,
    NetworkIsolation, ProcessContainment, ProgressFn, Sandbox, SandboxBackend, SandboxSpec,
    TemplateIdentity, TemplateInfo,
};
use crate::error::{Error, RejectReason, Result};
use crate::event::ArtifactErrorReason;
use crate::ids::RunId;
use crate::run::ArtifactKind;
use crate::spec::WorkspacePath;
use crate::time::Timestamp;

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir,
    Link(String),
    Fifo,
}

/// What the fake knows about one of its sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSandboxState {
    /// The run.
    pub run_id: RunId,
    /// Destroyed.
    pub destroyed: bool,
    /// Kept until.
    pub keep_until: Option<Timestamp>,
    /// The creating process.
    pub owner: crate::run::RunOwner,
}

#[derive(Debug, Default)]
struct Shared {
    sandboxes: Mutex<BTreeMap<String, FakeSandboxState>>,
    fail_create: AtomicBool,
    fail_destroy: AtomicBool,
    unusable: AtomicBool,
    materialize_delay_ms: std::sync::atomic::AtomicU64,
}

/// A scripted backend (see the module docs for the script language).
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    shared: Arc<Shared>,
    name: Option<Arc<str>>,
}

impl FakeBackend {
    /// A fake backend named `fake`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake backend registered under another name (e.g. to stand in for `process` in a
    /// policy test).
    pub fn named(name: &str) -> Self {
        Self {
            shared: Arc::default(),
            name: Some(name.into()),
        }
    }

    /// Makes every later `create` fail.
    pub fn fail_create(&self, fail: bool) {
        self.shared.fail_create.store(fail, Ordering::SeqCst);
    }

    /// Makes every later `destroy` fail.
    pub fn fail_destroy(&self, fail: bool) {
        self.shared.fail_destroy.store(fail, Ordering::SeqCst);
    }

    /// Makes `templates` fail (as a backend whose daemon went away does), for readiness
    /// checks.
    pub fn set_unusable(&self, unusable: bool) {
        self.shared.unusable.store(unusable, Ordering::SeqCst);
    }

    /// Makes every later `materialize` take this long (to observe `starting`).
    pub fn materialize_delay(&self, delay: Duration) {
        self.shared.materialize_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Every sandbox ever created, by id.
    pub fn sandboxes(&self) -> BTreeMap<String, FakeSandboxState> {
        self.shared
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sandboxes not destroyed.
    pub fn live_sandboxes(&self) -> Vec<String> {
        self.sandboxes()
            .into_iter()
            .filter(|(_, s)| !s.destroyed)
            .map(|(id, _)| id)
            .collect()
    }
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("fake")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            network_isolation: true,
            network_access: true,
            memory_limit: false,
            pids_limit: false,
            filesystem_isolation: true,
            process_tree_kill: true,
            keep_sandbox: true,
            non_root: true,
            security_boundary: false,
            exit_signal: true,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        if self.shared.unusable.load(Ordering::SeqCst) {
            return Err(Error::backend("fake", "injected: backend unusable"));
        }
        Ok(vec![TemplateInfo {
            name: "python-node".into(),
            available: true,
            reason: None,
            identity: Some(fake_identity()),
        }])
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        if spec.template != "python-node" {
            return Err(Error::invalid(
                "template",
                format!("unknown template {:?}", spec.template),
            ));
        }
        if self.shared.fail_create.load(Ordering::SeqCst) {
            return Err(Error::backend("fake", "injected create failure"));
        }
        let id = format!("fake-{}", uuid::Uuid::now_v7().simple());
        self.shared
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                FakeSandboxState {
                    run_id: spec.run_id.clone(),
                    destroyed: false,
                    keep_until: None,
                    owner: spec.owner.clone(),
                },
            );
        let (signal_tx, _) = watch::channel(None);
        Ok(Box::new(FakeSandbox {
            id,
            shared: self.shared.clone(),
            files: Mutex::new(BTreeMap::new()),
            signal: signal_tx,
            network: spec.network,
        }))
    }

    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>> {
        let now = Timestamp::now();
        let mut g = self
            .shared
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut swept = Vec::new();
        for (id, s) in g.iter_mut() {
            let orphan = crate::ownership::is_orphan(
                s.owner.liveness(),
                Some(s.run_id.as_str()),
                s.keep_until,
                live,
                now,
            );
            if !s.destroyed && orphan {
                s.destroyed = true;
                swept.push(id.clone());
            }
        }
        Ok(swept)
    }
}

fn fake_identity() -> TemplateIdentity {
    TemplateIdentity::default().with("fake", "python-node@1")
}

/// A fake sandbox.
#[derive(Debug)]
pub struct FakeSandbox {
    id: String,
    shared: Arc<Shared>,
    files: Mutex<BTreeMap<String, Node>>,
    signal: watch::Sender<Option<KillSignal>>,
    network: crate::spec::Network,
}

impl FakeSandbox {
    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `cwd` (normalized) is not a directory of the workspace, if it is not.
    fn bad_cwd(&self, cwd: &str) -> Option<String> {
        if cwd.is_empty() {
            return None;
        }
        let files = self.files();
        match files.get(cwd) {
            Some(Node::Dir) => None,
            Some(_) => Some(format!("cwd {cwd:?}: not a directory")),
            None if files.keys().any(|k| k.starts_with(&format!("{cwd}/"))) => None,
            None => Some(format!("cwd {cwd:?}: no such directory")),
        }
    }

    /// A tar of the regular files and directories under `dir`; links and fifos skipped.
    fn pack(
        files: &BTreeMap<String, Node>,
        dir: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut skipped = Vec::new();
        let prefix = format!("{dir}/");
        let failed = |e: std::io::Error| {
            ArtifactFailure::new(ArtifactErrorReason::NotRegular, format!("packing: {e}"))
        };
        for (path, node) in files.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            match node {
                Node::File(data, mode) => {
                    header.set_size(data.len() as u64);
                    header.set_mode(*mode);
                    header.set_entry_type(tar::EntryType::Regular);
                    builder
                        .append_data(&mut header, path, &data[..])
                        .map_err(failed)?;
                }
                Node::Dir => {
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_entry_type(tar::EntryType::Directory);
                    builder
                        .append_data(&mut header, path, std::io::empty())
                        .map_err(failed)?;
                }
                Node::Link(_) => skipped.push(crate::artifact::SkippedEntry {
                    path: path.clone(),
                    reason: crate::artifact::SkipReason::Symlink,
                }),
                Node::Fifo => skipped.push(crate::artifact::SkippedEntry {
                    path: path.clone(),
                    reason: crate::artifact::SkipReason::SpecialFile,
                }),
            }
        }
        let tar = builder.into_inner().map_err(failed)?;
        if tar.len() as u64 > max_bytes {
            return Err(ArtifactFailure::new(
                ArtifactErrorReason::TooLarge,
                format!("{dir:?} packs to {} bytes, over {max_bytes}", tar.len()),
            ));
        }
        Ok(CollectedArtifact {
            kind: ArtifactKind::Directory,
            mode: 0o755,
            size_bytes: tar.len() as u64,
            reader: Box::new(std::io::Cursor::new(tar)),
            skipped,
        })
    }
}

fn link_failure(path: &str, target: &str) -> ArtifactFailure {
    let reason = if target.starts_with('/') || target.contains("..") {
        ArtifactErrorReason::EscapesWorkspace
    } else {
        ArtifactErrorReason::NotRegular
    };
    ArtifactFailure::new(
        reason,
        format!("{path:?} is or passes through a symlink; links are not followed"),
    )
}

#[async_trait]
impl Sandbox for FakeSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn isolation(&self) -> IsolationReport {
        IsolationReport {
            backend: "fake".into(),
            network: match self.network {
                crate::spec::Network::None => NetworkIsolation::None,
                crate::spec::Network::Enabled => NetworkIsolation::Enabled,
            },
            process_containment: ProcessContainment::Simulated,
            ..Default::default()
        }
    }

    fn identity(&self) -> TemplateIdentity {
        fake_identity()
    }

    async fn materialize(
        &self,
        source: crate::backend::ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary> {
        // The fake has no work root, so the engine never prepares a tree for it.
        let crate::backend::ArchiveSource::Archive(mut archive) = source else {
            return Err(Error::invalid(
                "archive",
                "the fake backend takes no prepared tree",
            ));
        };
        let delay = self.shared.materialize_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut bytes = Vec::new();
        archive
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading archive", e))?;
        let summary = archive::validate(&bytes[..], policy, &mut |p| progress(p))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut files = BTreeMap::new();
        for entry in tar.entries().map_err(|e| Error::io("reading tar", e))? {
            let mut entry = entry.map_err(|e| Error::io("reading tar", e))?;
            let raw = entry.path().map_err(|e| Error::io("tar path", e))?;
            let path = WorkspacePath::parse(&raw.to_string_lossy())
                .map_err(|e| Error::rejected(RejectReason::InvalidPath, None, e.to_string()))?
                .as_str()
                .to_owned();
            let node = match entry.header().entry_type() {
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Symlink => Node::Link(
                    entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => {
                    let mut data = Vec::new();
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| Error::io("reading tar", e))?;
                    Node::File(data, entry.header().mode().unwrap_or(0o644) & 0o777)
                }
            };
            files.insert(path, node);
        }
        *self.files() = files;
        Ok(summary)
    }

    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome> {
        self.run_script(request, sink).await
    }

    async fn signal(&self, signal: KillSignal) -> Result<()> {
        self.signal.send_replace(Some(signal));
        Ok(())
    }

    async fn collect_artifact(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure> {
        let key = WorkspacePath::parse_entry(path)
            .map_err(|e| ArtifactFailure::new(ArtifactErrorReason::InvalidPath, e.to_string()))?
            .as_str()
            .to_owned();
        let files = self.files();
        // A symlinked parent is never followed.
        let mut parent = String::new();
        for component in key.split('/') {
            if let Some(Node::Link(target)) = files.get(&parent) {
                return Err(link_failure(path, target));
            }
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
        }
        let implied_dir = files.keys().any(|k| k.starts_with(&format!("{key}/")));
        match files.get(&key) {
            None if implied_dir => Self::pack(&files, &key, max_bytes),
            None => Err(ArtifactFailure::new(
                ArtifactErrorReason::NotFound,
                format!("{path:?} does not exist"),
            )),
            Some(Node::Link(target)) => Err(link_failure(path, target)),
            Some(Node::Fifo) => Err(ArtifactFailure::new(
                ArtifactErrorReason::NotRegular,
                format!("{path:?} is a fifo"),
            )),
            Some(Node::Dir) => Self::pack(&files, &key, max_bytes),
            Some(Node::File(data, mode)) => {
                if data.len() as u64 > max_bytes {
                    return Err(ArtifactFailure::new(
                        ArtifactErrorReason::TooLarge,
                        format!("{path:?} is {} bytes, over {max_bytes}", data.len()),
                    ));
                }
                Ok(CollectedArtifact {
                    kind: ArtifactKind::File,
                    mode: *mode,
                    size_bytes: data.len() as u64,
                    reader: Box::new(std::io::Cursor::new(Bytes::from(data.clone()))),
                    skipped: Vec::new(),
                })
            }
        }
    }

    async fn keep(&self, until: Timestamp) -> Result<()> {
        if let Some(s) = self
            .shared
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            s.keep_until = Some(until);
        }
        Ok(())
    }

    async fn destroy(&self) -> Result<Destroyed> {
        // A destroyed sandbox ends whatever still runs in it.
        self.signal.send_replace(Some(KillSignal::Kill));
        if self.shared.fail_destroy.load(Ordering::SeqCst) {
            return Err(Error::backend("fake", "injected destroy failure"));
        }
        if let Some(s) = self
            .shared
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            s.destroyed = true;
        }
        self.files().clear();
        Ok(Destroyed::Gone)
    }
}
