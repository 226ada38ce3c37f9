//! The Evidence Bundle (`crownest.evidence/v1`, DESIGN §2.6) and its in-toto view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{IsolationReport, TemplateIdentity};
use crate::error::{Error, Result};
use crate::event::{ChainSummary, Event, Failure};
use crate::ids::{ArtifactId, RunId, Sha256Digest};
use crate::run::{ArtifactErrorRecord, EnvEntry, RunRecord, RunTimestamps, UploadKind};
use crate::spec::Limits;
use crate::status::RunStatus;

/// Schema id of [`EvidenceBundle`].
pub const EVIDENCE_SCHEMA: &str = "crownest.evidence/v1";

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
    /// Always [`EVIDENCE_SCHEMA`].
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
    /// Env names with salted value hashes.
    pub env_names: Vec<EnvEntry>,
    /// Salt of the env hashes.
    pub env_salt: String,
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
            env_names: run.env.clone(),
            env_salt: run.env_salt.clone(),
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
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subjects,
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://crownest.dev/workspace-run/v1",
                    "externalParameters": {
                        "command": self.command,
                        "cwd": self.cwd,
                        "template": self.template.name,
                        "backend": self.template.backend,
                        "envNames": self.env_names.iter().map(|e| &e.name).collect::<Vec<_>>(),
                        "labels": self.source.labels,
                    },
                    "internalParameters": {
                        "limits": self.limits,
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
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
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
