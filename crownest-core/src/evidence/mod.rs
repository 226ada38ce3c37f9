//! The Evidence Bundle (DESIGN §2.6), how it is bound to the event chain, and its in-toto
//! view. The exact format, step by step, is `docs/evidence.md`.
//!
//! Three layouts share [`EvidenceBundle`], told apart by `schema`:
//!
//! | schema | what proves it |
//! |---|---|
//! | [`EVIDENCE_SCHEMA`] `crownest.evidence/v2` (written now) | the event chain alone: every field is derived from the events ([`derive()`]), and the terminal event carries the digest of the bundle's canonical form ([`EvidenceBundle::content_digest`]) |
//! | [`EVIDENCE_SCHEMA_V1_1`] `crownest.evidence/v1.1` | the chain, the terminal outcome and the artifact list; other fields were not bound |
//! | [`EVIDENCE_SCHEMA_V1`] `crownest.evidence/v1` | as v1.1; env as `envNames` with salted hashes and `envSalt` |
//!
//! v1 carried every env value as a salted hash next to its salt, so a short value (a PIN, a
//! word) was recovered by an offline dictionary in well under a second; v1.1 and v2 record
//! plain settings as they are and secrets by name only. v1 and v1.1 bundles still in a
//! store deserialize with their fields intact and serialize back to the same JSON, so their
//! digest, their in-toto view and a DSSE signature made over it keep verifying under their
//! own rules ([`verify`]).

mod derive;
mod in_toto;
mod records;
mod verify;

pub use derive::derive;
pub use records::{OutputSummary, SpecRecord, StreamSummary};
pub use verify::{EvidenceProblem, verify};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{IsolationReport, TemplateIdentity};
use crate::error::{Error, Result};
use crate::event::{ChainSummary, Event, Failure};
use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::run::{ArtifactErrorRecord, RunRecord, RunTimestamps, UploadKind};
use crate::spec::{ArtifactRequest, KeepSandbox, Limits, Network};
use crate::status::RunStatus;

/// Schema id of the [`EvidenceBundle`]s written now.
pub const EVIDENCE_SCHEMA: &str = "crownest.evidence/v2";

/// Schema id of the bundles written before evidence v2 (plain env, unbound fields).
pub const EVIDENCE_SCHEMA_V1_1: &str = "crownest.evidence/v1.1";

/// Schema id of the bundles written before secrets were split from env (see the module
/// docs); still read and verified.
pub const EVIDENCE_SCHEMA_V1: &str = "crownest.evidence/v1";

/// An env variable in a [`EVIDENCE_SCHEMA_V1`] bundle: its name and a salted hash of its
/// value. Read (and written back unchanged) only; new bundles never carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnvEntry {
    /// Variable name.
    pub name: String,
    /// `sha256(salt ‖ name ‖ 0x00 ‖ value)`, hex.
    pub value_sha256: String,
}

/// The template a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceTemplate {
    /// Template name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// What exactly ran (image id, module sha256, interpreter paths and versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<TemplateIdentity>,
}

/// The source archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceSource {
    /// Size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// How it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadKind>,
    /// The host app's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One artifact in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceArtifact {
    /// Id.
    pub artifact_id: ArtifactId,
    /// Requested path.
    pub path: String,
    /// Size.
    pub size_bytes: u64,
    /// sha256.
    pub sha256: Sha256Digest,
    /// Entries of a directory artifact left out of its tar (path and reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::artifact::SkippedEntry>,
}

/// What happened to the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceSandbox {
    /// Kept after the run.
    pub kept: bool,
    /// Destroyed: nothing of it runs and nothing can reach it any more.
    pub destroyed: bool,
    /// Destroyed, but its files were still being deleted in the background when the run
    /// ended (absent when the deletion had finished).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removal_pending: bool,
    /// When a kept sandbox is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until: Option<crate::time::Timestamp>,
}

/// The durable proof of a run, written in the same store transaction as its terminal event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceBundle {
    /// [`EVIDENCE_SCHEMA`] (or [`EVIDENCE_SCHEMA_V1_1`] / [`EVIDENCE_SCHEMA_V1`] for a bundle
    /// written before).
    pub schema: String,
    /// Run id.
    pub run_id: RunId,
    /// Terminal status.
    pub status: RunStatus,
    /// Exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// argv.
    pub command: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The plain env settings, names and values (omitted when there are none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The names of the secrets, sorted; never a value or a hash of one (omitted when there
    /// are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// v1 bundles only: env names with salted value hashes. `None` in every new bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_names: Option<Vec<EnvEntry>>,
    /// v1 bundles only: the salt of `env_names`' hashes. `None` in every new bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_salt: Option<String>,
    /// Template.
    pub template: EvidenceTemplate,
    /// Milestones.
    pub timestamps: RunTimestamps,
    /// Source archive.
    pub source: EvidenceSource,
    /// Artifacts.
    pub artifacts: Vec<EvidenceArtifact>,
    /// Artifact errors.
    pub artifact_errors: Vec<ArtifactErrorRecord>,
    /// The limits that applied.
    pub limits: Limits,
    /// Network access asked for (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The artifact paths asked for (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_requested: Option<Vec<ArtifactRequest>>,
    /// Keep the sandbox after the run, as asked (v2; absent: destroy it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_sandbox: Option<KeepSandbox>,
    /// Both output streams' totals and digests (v2; absent when the command never ran or
    /// recovery ended the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSummary>,
    /// What the backend actually enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationReport>,
    /// Sandbox fate.
    pub sandbox: EvidenceSandbox,
    /// Event count and chain head, including the terminal event.
    pub events: ChainSummary,
    /// The terminal event.
    pub terminal_event: Event,
    /// CrowNest version.
    pub crownest_version: String,
}

impl EvidenceBundle {
    /// Builds the bundle from the final run record and the terminal event. A run created
    /// before evidence v2 (its chain has no `spec` event) gets a v1.1 bundle.
    ///
    /// For v2 the engine seals the terminal event twice: first without `bundleDigest` (any
    /// terminal event serves for [`content_digest`](Self::content_digest), which leaves it
    /// out), then with it, and hands the final one to [`set_terminal`](Self::set_terminal).
    pub fn build(
        run: &RunRecord,
        identity: Option<TemplateIdentity>,
        isolation: Option<IsolationReport>,
        output: Option<OutputSummary>,
        terminal_event: Event,
    ) -> Self {
        let v2 = run.evidence_v2;
        let sandbox = run.sandbox.as_ref();
        let mut bundle = Self {
            schema: if v2 {
                EVIDENCE_SCHEMA
            } else {
                EVIDENCE_SCHEMA_V1_1
            }
            .into(),
            run_id: run.id.clone(),
            status: run.status,
            exit_code: run.exit_code,
            signal: run.signal,
            failure: run.failure.clone(),
            command: run.spec.command.clone(),
            cwd: run.spec.cwd.clone(),
            env: run.spec.env.clone(),
            secret_names: run.secret_names.clone(),
            env_names: None,
            env_salt: None,
            template: EvidenceTemplate {
                name: run.spec.template.clone(),
                backend: run.backend.clone(),
                identity,
            },
            timestamps: run.timestamps.clone(),
            source: EvidenceSource {
                size_bytes: run.archive.as_ref().map(|a| a.size_bytes),
                sha256: run.archive.as_ref().map(|a| a.sha256.clone()),
                upload: run.archive.as_ref().map(|a| a.upload),
                labels: run.spec.labels.clone(),
            },
            artifacts: run
                .artifacts
                .iter()
                .map(|a| EvidenceArtifact {
                    artifact_id: a.artifact_id.clone(),
                    path: a.path.clone(),
                    size_bytes: a.size_bytes,
                    sha256: a.sha256.clone(),
                    skipped: a.skipped.clone(),
                })
                .collect(),
            artifact_errors: run.artifact_errors.clone(),
            limits: run.limits,
            network: None,
            artifacts_requested: None,
            keep_sandbox: None,
            output: None,
            isolation,
            sandbox: EvidenceSandbox::of(sandbox),
            events: ChainSummary {
                count: 0,
                chain_head: String::new(),
            },
            terminal_event: terminal_event.clone(),
            crownest_version: env!("CARGO_PKG_VERSION").into(),
        };
        if v2 {
            bundle.network = Some(run.spec.network);
            bundle.artifacts_requested = Some(run.spec.artifacts.clone());
            bundle.keep_sandbox = run.spec.keep_sandbox;
            bundle.output = output;
        }
        bundle.set_terminal(terminal_event);
        bundle
    }

    /// Names `event` as the terminal event, with the chain's count and head.
    pub fn set_terminal(&mut self, event: Event) {
        self.events = ChainSummary {
            count: event.seq,
            chain_head: event.hash.clone(),
        };
        self.terminal_event = event;
    }

    /// Why this bundle's layout does not fit its `schema`, if it does not: an unknown
    /// schema, a v1.1/v2 bundle carrying v1's salted hashes, or a v1 bundle without them or
    /// with the later fields.
    pub fn schema_problem(&self) -> Option<String> {
        let legacy = self.env_names.is_some() || self.env_salt.is_some();
        match self.schema.as_str() {
            EVIDENCE_SCHEMA | EVIDENCE_SCHEMA_V1_1 if legacy => Some(format!(
                "a {} bundle carries envNames/envSalt (salted env hashes)",
                self.schema
            )),
            EVIDENCE_SCHEMA | EVIDENCE_SCHEMA_V1_1 => None,
            EVIDENCE_SCHEMA_V1
                if self.env_names.is_none()
                    || self.env_salt.is_none()
                    || !self.env.is_empty()
                    || !self.secret_names.is_empty() =>
            {
                Some(format!(
                    "a {EVIDENCE_SCHEMA_V1} bundle must have envNames and envSalt and no env or secretNames"
                ))
            }
            EVIDENCE_SCHEMA_V1 => None,
            other => Some(format!(
                "evidence schema is {other:?}, expected {EVIDENCE_SCHEMA:?}, {EVIDENCE_SCHEMA_V1_1:?} or {EVIDENCE_SCHEMA_V1:?}"
            )),
        }
    }

    /// True for a bundle whose every field is bound to the chain ([`EVIDENCE_SCHEMA`]).
    pub fn is_v2(&self) -> bool {
        self.schema == EVIDENCE_SCHEMA
    }

    /// The in-toto view ([`to_in_toto`](Self::to_in_toto)) signed by `key` in a DSSE
    /// envelope (see [`crate::signing`]).
    pub fn to_dsse(&self, key: &crate::signing::HostKey) -> crate::signing::DsseEnvelope {
        key.sign_statement(&self.to_in_toto())
    }

    /// sha256 of the bundle's canonical JSON (RFC 8785; v1 and v1.1 bundles: the byte-order
    /// variant they were written with, see [`crate::canonical::legacy_json`]).
    pub fn digest(&self) -> Sha256Digest {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        match self.schema.as_str() {
            EVIDENCE_SCHEMA => Sha256Digest::of(&crate::canonical::to_vec(&v)),
            schema => {
                if schema == EVIDENCE_SCHEMA_V1
                    && let Some(limits) = v.get_mut("limits").and_then(Value::as_object_mut)
                {
                    // Written before `pathBytes` existed: hash the bundle as it was written.
                    limits.remove("pathBytes");
                }
                Sha256Digest::of(&crate::canonical::legacy_json(&v))
            }
        }
    }

    /// The digest a v2 terminal event carries as `bundleDigest`: sha256 of the RFC 8785
    /// form of the bundle without `events` and `terminalEvent` (the two fields that name
    /// the terminal event itself).
    pub fn content_digest(&self) -> Sha256Digest {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        content_digest_of(&v)
    }

    /// Offline check: the events verify, end with this bundle's terminal event, and their
    /// count and head match what the bundle recorded.
    pub fn verify_events(&self, events: &[Event]) -> Result<ChainSummary> {
        let got = crate::event::verify_against(&self.run_id, events, &self.events)?;
        match events.last() {
            Some(last) if *last == self.terminal_event => Ok(got),
            _ => Err(Error::Conflict {
                message: "last event is not the bundle's terminal event".into(),
            }),
        }
    }
}

/// [`EvidenceBundle::content_digest`] of a bundle as JSON (as read from a file: fields this
/// build does not know are hashed too).
pub fn content_digest_of(bundle: &Value) -> Sha256Digest {
    let mut v = bundle.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("events");
        map.remove("terminalEvent");
    }
    Sha256Digest::of(&crate::canonical::to_vec(&v))
}

impl EvidenceArtifact {
    /// The artifact an `artifact_collected` event records (`None` for any other event).
    pub fn of_event(kind: &crate::event::EventKind) -> Option<Self> {
        match kind {
            crate::event::EventKind::ArtifactCollected {
                artifact_id,
                path,
                size_bytes,
                sha256,
                skipped,
                ..
            } => Some(Self {
                artifact_id: artifact_id.clone(),
                path: path.clone(),
                size_bytes: *size_bytes,
                sha256: sha256.clone(),
                skipped: skipped.clone(),
            }),
            _ => None,
        }
    }
}

impl EvidenceSandbox {
    /// The fate of a run's sandbox (none made: nothing kept, nothing left to destroy).
    pub fn of(sandbox: Option<&crate::run::SandboxRecord>) -> Self {
        Self {
            kept: sandbox.is_some_and(|s| s.kept),
            destroyed: sandbox.is_none_or(|s| s.destroyed),
            removal_pending: sandbox.is_some_and(|s| s.removal_pending),
            keep_until: sandbox.and_then(|s| s.keep_until),
        }
    }
}
