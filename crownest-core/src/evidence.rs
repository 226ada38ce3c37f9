//! The Evidence Bundle (DESIGN §2.6) and its in-toto view.
//!
//! Two layouts share this type, told apart by `schema`:
//!
//! | schema | env fields |
//! |---|---|
//! | [`EVIDENCE_SCHEMA`] `crownest.evidence/v1.1` (written now) | `env`: the plain settings, names and values; `secretNames`: the names of the secrets (no value, no hash) |
//! | [`EVIDENCE_SCHEMA_V1`] `crownest.evidence/v1` (written before) | `envNames`: `[{name, valueSha256}]` with `valueSha256 = sha256(envSalt ‖ name ‖ 0 ‖ value)`, and `envSalt` |
//!
//! v1 carried every env value as a salted hash next to its salt, so a short value (a PIN, a
//! word) was recovered by an offline dictionary in well under a second; v1.1 records plain
//! settings as they are and secrets by name only. Every other field is the same. v1
//! bundles still in a store deserialize with their legacy fields intact and serialize back
//! to the same JSON, so their digest, their in-toto view and a DSSE signature made over it
//! keep verifying.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{IsolationReport, TemplateIdentity};
use crate::error::{Error, Result};
use crate::event::{ChainSummary, Event, Failure};
use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::run::{ArtifactErrorRecord, RunRecord, RunTimestamps, UploadKind};
use crate::spec::Limits;
use crate::status::RunStatus;

/// Schema id of the [`EvidenceBundle`]s written now.
pub const EVIDENCE_SCHEMA: &str = "crownest.evidence/v1.1";

/// Schema id of the bundles written before secrets were split from env (see the module
/// docs); still read and verified.
pub const EVIDENCE_SCHEMA_V1: &str = "crownest.evidence/v1";

/// An env variable in a [`EVIDENCE_SCHEMA_V1`] bundle: its name and a salted hash of its
/// value. Read (and written back unchanged) only; new bundles never carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvEntry {
    /// Variable name.
    pub name: String,
    /// `sha256(salt ‖ name ‖ 0x00 ‖ value)`, hex.
    pub value_sha256: String,
}

/// The template a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[serde(rename_all = "camelCase")]
pub struct EvidenceBundle {
    /// [`EVIDENCE_SCHEMA`] (or [`EVIDENCE_SCHEMA_V1`] for a bundle written before).
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
    /// Builds the bundle from the final run record and the sealed terminal event.
    pub fn build(
        run: &RunRecord,
        identity: Option<TemplateIdentity>,
        isolation: Option<IsolationReport>,
        terminal_event: Event,
    ) -> Self {
        let sandbox = run.sandbox.as_ref();
        Self {
            schema: EVIDENCE_SCHEMA.into(),
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
            isolation,
            sandbox: EvidenceSandbox {
                kept: sandbox.is_some_and(|s| s.kept),
                destroyed: sandbox.is_none_or(|s| s.destroyed),
                removal_pending: sandbox.is_some_and(|s| s.removal_pending),
                keep_until: sandbox.and_then(|s| s.keep_until),
            },
            events: ChainSummary {
                count: terminal_event.seq,
                chain_head: terminal_event.hash.clone(),
            },
            terminal_event,
            crownest_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Why this bundle's layout does not fit its `schema`, if it does not: an unknown
    /// schema, a v1.1 bundle carrying v1's salted hashes, or a v1 bundle without them or
    /// with v1.1's fields.
    pub fn schema_problem(&self) -> Option<String> {
        let legacy = self.env_names.is_some() || self.env_salt.is_some();
        match self.schema.as_str() {
            EVIDENCE_SCHEMA if legacy => Some(format!(
                "a {EVIDENCE_SCHEMA} bundle carries envNames/envSalt (salted env hashes)"
            )),
            EVIDENCE_SCHEMA => None,
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
                "evidence schema is {other:?}, expected {EVIDENCE_SCHEMA:?} or {EVIDENCE_SCHEMA_V1:?}"
            )),
        }
    }

    /// `externalParameters.env*` of the in-toto view: v1 bundles name their env variables
    /// (exactly as they did when they were written, so old signatures hold); newer ones give
    /// the plain settings and the secret names.
    fn env_parameters(&self, params: &mut serde_json::Map<String, Value>) {
        match &self.env_names {
            Some(entries) => {
                let names: Vec<&String> = entries.iter().map(|e| &e.name).collect();
                params.insert("envNames".into(), json!(names));
            }
            None => {
                params.insert("env".into(), json!(self.env));
                params.insert("secretNames".into(), json!(self.secret_names));
            }
        }
    }

    /// `internalParameters.limits` of the in-toto view. A v1 bundle's view is the one it was
    /// signed with: limits added to [`Limits`] since (`pathBytes`) are left out of it.
    fn limits_parameter(&self) -> Value {
        let mut limits = json!(self.limits);
        if self.schema == EVIDENCE_SCHEMA_V1
            && let Some(map) = limits.as_object_mut()
        {
            map.remove("pathBytes");
        }
        limits
    }

    /// An in-toto Statement v1 with a SLSA Provenance v1 predicate; subjects = artifacts.
    pub fn to_in_toto(&self) -> Value {
        let subjects: Vec<Value> = self
            .artifacts
            .iter()
            .map(|a| json!({"name": a.path, "digest": {"sha256": a.sha256}}))
            .collect();
        let mut deps = Vec::new();
        if let Some(sha) = &self.source.sha256 {
            deps.push(json!({"name": "workspace.tar.gz", "digest": {"sha256": sha}}));
        }
        let mut external = serde_json::Map::new();
        external.insert("command".into(), json!(self.command));
        external.insert("cwd".into(), json!(self.cwd));
        external.insert("template".into(), json!(self.template.name));
        external.insert("backend".into(), json!(self.template.backend));
        self.env_parameters(&mut external);
        external.insert("labels".into(), json!(self.source.labels));
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subjects,
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://crownest.dev/workspace-run/v1",
                    "externalParameters": external,
                    "internalParameters": {
                        "limits": self.limits_parameter(),
                        "isolation": self.isolation,
                        "templateIdentity": self.template.identity,
                    },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": format!("https://crownest.dev/crownest@{}", self.crownest_version)},
                    "metadata": {
                        "invocationId": self.run_id,
                        "startedOn": self.timestamps.command_started.or(self.timestamps.started),
                        "finishedOn": self.timestamps.terminal,
                    },
                    "byproducts": [{
                        "name": "crownest.evidence",
                        "digest": {"sha256": self.digest()},
                        "annotations": {
                            "status": self.status,
                            "exitCode": self.exit_code,
                            "eventsChainHead": self.events.chain_head,
                            "eventsCount": self.events.count,
                        }
                    }]
                }
            }
        })
    }

    /// The in-toto view ([`to_in_toto`](Self::to_in_toto)) signed by `key` in a DSSE
    /// envelope (see [`crate::signing`]).
    pub fn to_dsse(&self, key: &crate::signing::HostKey) -> crate::signing::DsseEnvelope {
        key.sign_statement(&self.to_in_toto())
    }

    /// sha256 of the bundle's canonical JSON.
    pub fn digest(&self) -> Sha256Digest {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.schema == EVIDENCE_SCHEMA_V1
            && let Some(limits) = v.get_mut("limits").and_then(Value::as_object_mut)
        {
            // Written before `pathBytes` existed: hash the bundle as it was written.
            limits.remove("pathBytes");
        }
        Sha256Digest::of(&crate::event::canonical_json(&v))
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
