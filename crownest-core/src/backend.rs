//! The sandbox traits: [`SandboxBackend`] makes [`Sandbox`]es.
//!
//! A backend reports what it can enforce as data ([`Capabilities`]); each sandbox reports
//! what it actually enforced ([`IsolationReport`]), which goes into the Evidence Bundle.
//! The engine never pretends: it refuses a run that requires what the backend cannot
//! enforce, and records what a run asked for by default and did not get (`notEnforced`);
//! the rule lives in [`crate::capability`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Read;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::capability::{
    Capabilities, Capability, IsolationReport, NetworkIsolation, ProcessContainment,
};

use crate::archive::{ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::artifact::{ArtifactFailure, CollectedArtifact};
use crate::error::Result;
use crate::event::OutputStream;
use crate::hostdir::{PreparedTree, WorkRoot};
use crate::ids::RunId;
use crate::ownership::RunOwner;
use crate::secret::SecretValue;
use crate::spec::{Limits, Network};
use crate::time::Timestamp;

/// What exactly a template resolved to (image id, module digests, interpreter versions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateIdentity {
    /// Ordered key → value facts, e.g. `imageId` → `sha256:...`, `python3.path` → `/usr/bin/python3`.
    pub facts: BTreeMap<String, String>,
}

impl TemplateIdentity {
    /// Adds one fact.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.facts.insert(key.into(), value.into());
        self
    }
}

/// A template a backend offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    /// Name (`python-node`).
    pub name: String,
    /// Usable right now on this host.
    pub available: bool,
    /// Why not, when unavailable (e.g. "image missing: run scripts/build-docker-image.sh").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Identity when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<TemplateIdentity>,
}

/// What the engine asks a backend to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The run (sandboxes are labelled with it so orphans can be swept).
    pub run_id: RunId,
    /// The engine instance creating it.
    pub instance: String,
    /// The process creating it (pid + start time). Backends record it with the sandbox
    /// (label, marker file) so `sweep_orphans` can tell an orphan from a live sandbox.
    pub owner: RunOwner,
    /// Template name.
    pub template: String,
    /// Resolved limits.
    pub limits: Limits,
    /// Network mode.
    pub network: Network,
}

/// One command to execute in the sandbox's `/workspace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// argv (non-empty).
    pub argv: Vec<String>,
    /// Relative working directory inside `/workspace` (validated).
    pub cwd: String,
    /// Plain settings for the command's environment (recorded; fine to log).
    pub env: BTreeMap<String, String>,
    /// Secret variables for the command's environment (never log, store or put them in a
    /// persisted configuration; names never collide with `env`'s).
    pub secrets: BTreeMap<String, SecretValue>,
}

impl ExecRequest {
    /// A request for `argv` in the workspace root, with no variables.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: ".".into(),
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// The command's variables: `env` and the exposed `secrets` in one map, for backends
    /// that hand the environment to a process or a WASI context directly.
    pub fn command_env(&self) -> BTreeMap<String, String> {
        let mut all = self.env.clone();
        all.extend(
            self.secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned())),
        );
        all
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It could not be started (no such program, bad cwd, ...).
    SpawnFailed(String),
    /// A resource limit ended it (e.g. OOM), with details.
    LimitExceeded(String),
}

/// The result of [`Sandbox::exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// How it ended.
    pub status: ExitStatus,
    /// Processes that survived the final kill (should be empty; reported, never hidden).
    pub survivors: Vec<String>,
}

impl ExecOutcome {
    /// An outcome with no survivors.
    pub fn new(status: ExitStatus) -> Self {
        Self {
            status,
            survivors: Vec::new(),
        }
    }
}

/// Signals of the kill ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KillSignal {
    /// Polite: SIGTERM to the whole process tree.
    Term,
    /// Final: SIGKILL to the whole process tree.
    Kill,
}

impl KillSignal {
    /// `SIGTERM` / `SIGKILL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Kill => "SIGKILL",
        }
    }
}

/// Where a sandbox sends what its command does. Implemented by the engine.
///
/// Awaiting [`ExecSink::output`] is the backpressure: a backend must not read more output
/// while the previous chunk is not accepted, and must keep draining (and calling `output`)
/// after the stored cap is reached; the sink drops the excess and reports it.
#[async_trait]
pub trait ExecSink: Send + Sync {
    /// The command was spawned (the run moves to `running`). Call once, before any output.
    async fn started(&self);
    /// Bytes the command wrote, in order per stream, any size (the sink re-chunks).
    async fn output(&self, stream: OutputStream, data: &[u8]);
}

/// A progress callback for archive extraction.
pub type ProgressFn<'a> = &'a (dyn Fn(ExtractProgress) + Send + Sync);

/// The warm pool of one template: sandboxes a backend created ahead of their runs (see
/// [`SandboxBackend::pools`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The template.
    pub template: String,
    /// How many sandboxes it keeps ready.
    pub size: u64,
    /// Ready now.
    pub ready: u64,
    /// Being created (refills in flight).
    pub creating: u64,
    /// Taken by runs and not destroyed yet.
    pub in_use: u64,
    /// Runs that took a ready sandbox, since the backend was set up.
    pub hits: u64,
    /// Runs of this template that got a fresh sandbox (none ready, or none fitting).
    pub misses: u64,
    /// The idle cost: the memory limits of the ready sandboxes, summed (what they may use
    /// at most; an idle one uses about a megabyte).
    pub idle_memory_limit_bytes: u64,
    /// Why the last refill failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A backend: a factory of sandboxes for named templates.
///
/// # Contract
///
/// * `name()` is stable and non-empty.
/// * `templates()` lists `python-node`; an unavailable template says why.
/// * `create()` returns a fresh sandbox with an empty `/workspace`, labelled with the run id
///   and engine instance; an unknown template is `Error::InvalidSpec` (field `template`).
/// * `sweep_orphans(live)` destroys every sandbox of this backend whose owner process is
///   gone ([`RunOwner::is_alive`] is false) and whose run is not in `live`, and every kept
///   sandbox whose `keep_until` has passed; it never touches a sandbox whose owner is alive
///   and that is not kept-and-expired (other engines may share the host). It returns the
///   ids of what it destroyed (the same strings as [`Sandbox::id`]), and also removes
///   leftovers such as staging directories.
/// * `shutdown()` releases what the backend holds for future runs (a warm pool); sandboxes
///   of runs are not touched. After it, `create` still works (without a pool).
/// * A sandbox taken from a warm pool is used by exactly one run, destroyed after it, and
///   enforces exactly what a fresh one would; its isolation report says `pooled`.
#[async_trait]
pub trait SandboxBackend: Send + Sync + Debug {
    /// Registered name (`process`, `docker`, `wasm`).
    fn name(&self) -> &str;
    /// What this backend can enforce.
    fn capabilities(&self) -> Capabilities;
    /// Templates with their availability and identity.
    async fn templates(&self) -> Result<Vec<TemplateInfo>>;
    /// Creates a sandbox.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>>;
    /// Destroys orphaned sandboxes of runs not in `live`.
    async fn sweep_orphans(&self, live: &[RunId]) -> Result<Vec<String>>;
    /// The private work root on which the engine may extract a run's archive while it is
    /// uploaded (the one-pass path, `docs/archive.md`): such a tree reaches
    /// [`Sandbox::materialize`] as [`ArchiveSource::Prepared`] and is moved, not copied, so
    /// it must be on the filesystem of this backend's sandbox directories (or, for a
    /// backend that copies trees elsewhere, anywhere private). Prepared trees carry this
    /// backend's marker, so `sweep_orphans` removes those a crash left. `None` (the
    /// default): archives are extracted at start.
    fn prepare_root(&self) -> Option<WorkRoot> {
        None
    }
    /// The warm pools this backend keeps (none by default).
    fn pools(&self) -> Vec<PoolStatus> {
        Vec::new()
    }
    /// Releases what the backend holds for future runs (drains a warm pool). Default: nothing.
    async fn shutdown(&self) {}
}

/// What [`Sandbox::materialize`] puts into `/workspace`.
pub enum ArchiveSource {
    /// The stored archive's bytes (the store checked their digest when it stored them):
    /// extract them with the core extractor.
    Archive(Box<dyn Read + Send>),
    /// The tree the engine extracted and checked at upload on this backend's
    /// [`SandboxBackend::prepare_root`]: move it into place (or copy it, for a backend whose
    /// workspace is not a host directory), then it is gone.
    Prepared(PreparedTree),
}

impl Debug for ArchiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Archive(_) => f.write_str("Archive(..)"),
            Self::Prepared(t) => f.debug_tuple("Prepared").field(t).finish(),
        }
    }
}

/// One sandbox, used for exactly one command.
///
/// # Contract
///
/// * `materialize` extracts the archive with the core extractor ([`crate::archive`]) into a
///   private staging directory moved into place only on success, or moves in the tree
///   prepared at upload ([`ArchiveSource`]): the command never sees a partial tree, and a
///   hostile archive is `Error::ArchiveRejected` with nothing written outside the
///   workspace.
/// * `exec` runs the argv with exactly the given environment (`env` and `secrets`, plus
///   the template's own variables), cwd inside `/workspace`,
///   stdin closed; calls `sink.started()` once spawned and before any output; streams
///   stdout and stderr in order with backpressure; returns `Exited(code)`,
///   `Signaled(sig)`, `SpawnFailed` (unknown program, bad cwd) or `LimitExceeded`.
///   It returns only after the command and everything it started have ended. Secret
///   values reach the command and nothing the backend stores or shows about the sandbox
///   (a container's or exec's configuration, labels, marker files, logs).
/// * `signal(Term|Kill)` reaches every process the command started; a command that ignores
///   `Term` still ends on `Kill`; signalling with no command running is `Ok`.
/// * `collect_artifact(path)` reads only inside the workspace, never follows a symlink,
///   returns regular files and directories (as a tar), and refuses anything else with a
///   typed [`ArtifactFailure`]; it never reads more than `max_bytes`.
/// * `destroy()` is idempotent and verifies that nothing of the sandbox survives: no
///   process runs and nothing can reach it any more. It does not wait long for bulk file
///   deletion: a host directory is renamed to a tombstone at once and deleted in the
///   background ([`Destroyed::RemovalPending`]); a sweep deletes tombstones a crash left.
/// * `keep(until)` marks the sandbox as kept; `sweep_orphans` destroys it after `until`.
#[async_trait]
pub trait Sandbox: Send + Sync + Debug {
    /// Backend-specific id (container id, directory).
    fn id(&self) -> &str;
    /// What this sandbox enforces.
    fn isolation(&self) -> IsolationReport;
    /// What the template resolved to.
    fn identity(&self) -> TemplateIdentity;
    /// Puts the run's verified archive into `/workspace`.
    async fn materialize(
        &self,
        source: ArchiveSource,
        policy: &ExtractPolicy,
        progress: ProgressFn<'_>,
    ) -> Result<ExtractSummary>;
    /// Runs the command to completion.
    async fn exec(&self, request: &ExecRequest, sink: &dyn ExecSink) -> Result<ExecOutcome>;
    /// Signals everything the running command started.
    async fn signal(&self, signal: KillSignal) -> Result<()>;
    /// Collects one artifact (after the command ended).
    async fn collect_artifact(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> std::result::Result<CollectedArtifact, ArtifactFailure>;
    /// Marks the sandbox as kept until `until`.
    async fn keep(&self, until: Timestamp) -> Result<()>;
    /// Destroys the sandbox (idempotent); verifies nothing survives.
    async fn destroy(&self) -> Result<Destroyed>;
}

/// What [`Sandbox::destroy`] achieved. In both cases nothing of the sandbox runs and it can
/// no longer be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Destroyed {
    /// Nothing of it is left.
    #[default]
    Gone,
    /// Its files are still being deleted in the background (a large workspace on a slow
    /// disk); the evidence says `removalPending`.
    RemovalPending,
}
