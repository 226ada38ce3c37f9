//! # crownest-core
//!
//! The core of CrowNest: the Workspace Run model, its state machine, the hash-chained
//! event log, archive intake and extraction, artifact collection, the Evidence Bundle, the
//! [`Store`] and [`SandboxBackend`] traits, and the [`WorkspaceRuns`] engine.
//!
//! Core never depends on a sandbox technology or a database: backends
//! (`crownest-backend-process`, `-docker`, `-wasm`) and stores (`crownest-store-sqlite`,
//! [`MemoryStore`]) plug in behind the traits.
//!
//! A run's spec has two kinds of variables: `env`, plain settings recorded with their values
//! and never masked, and `secrets`, masked in output (an accidental-echo guard only: a
//! reversed or base64 value passes), never stored, recorded by name only. See [`secret`].
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `testing` | `testing::FakeBackend`, a scripted backend for testing the engine's logic |
//! | `conformance` | `conformance`: one async fn per trait contract bullet, and macros that stamp them as tests |

pub mod archive;
pub mod artifact;
pub mod backend;
pub mod canonical;
pub mod capability;
pub mod error;
pub mod event;
pub mod evidence;
pub mod gc;
pub mod hostdir;
pub mod ids;
pub mod lifecycle;
pub mod ownership;
pub mod run;
pub mod secret;
pub mod signing;
pub mod spec;
pub mod status;
pub mod store;
pub mod time;

pub use backend::{
    ArchiveSource, Capabilities, Capability, Destroyed, ExecOutcome, ExecRequest, ExecSink,
    ExitStatus, IsolationReport, KillSignal, NetworkIsolation, PoolStatus, ProcessContainment,
    Sandbox, SandboxBackend, SandboxSpec, TemplateIdentity, TemplateInfo,
};
pub use error::{ChunkRejectReason, Error, RejectReason, Result};
pub use event::{Event, EventKind, Failure, FailureKind, NewEvent, OutputStream};
pub use evidence::EvidenceBundle;
pub use ids::{ArtifactId, RunId, Sha256Digest, TransferId};
pub use lifecycle::{Input, Outcome, transition};
pub use run::{ArchiveDescriptor, Artifact, RunRecord, UploadKind};
pub use secret::SecretValue;
pub use spec::{ArtifactRequest, LimitOverrides, Limits, Network, RunSpec, WorkspacePath};
pub use status::RunStatus;
pub use store::Store;
pub use time::Timestamp;

pub mod engine;
pub mod memory;

pub use engine::{
    EngineConfig, EngineMetrics, EventStream, GcTask, RecoveryReport, TransferStatus,
    WorkspaceRuns, WorkspaceRunsBuilder,
};
pub use memory::MemoryStore;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;
