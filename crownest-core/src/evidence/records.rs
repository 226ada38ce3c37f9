//! The payloads that put a run's provenance into its event chain (evidence v2): what the
//! client asked for (`spec`), what the host used (`environment`), and how the run ended
//! beyond its status (the `terminal` event's output and sandbox summaries).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::capability::Capability;
use crate::run::RunRecord;
use crate::spec::{ArtifactRequest, KeepSandbox, Limits, Network};

/// The run spec as the engine accepted it, recorded in the chain's first event (`spec`).
/// Secret values never appear: only their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SpecRecord {
    /// Template name.
    pub template: String,
    /// The resolved backend name.
    pub backend: String,
    /// argv.
    pub command: Vec<String>,
    /// Working directory inside `/workspace`.
    pub cwd: String,
    /// Plain env settings, names and values.
    pub env: BTreeMap<String, String>,
    /// Names of the secrets, sorted.
    pub secret_names: Vec<String>,
    /// Requested artifacts.
    pub artifacts: Vec<ArtifactRequest>,
    /// The resolved limits (engine defaults with the spec's overrides).
    pub limits: Limits,
    /// Network access asked for.
    pub network: Network,
    /// Keep the sandbox after the run (absent: destroy it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_sandbox: Option<KeepSandbox>,
    /// Explicit limits the run accepted as best-effort (`RunSpec::best_effort`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub best_effort: BTreeSet<Capability>,
    /// The host app's labels.
    pub labels: BTreeMap<String, String>,
    /// The idempotency key, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl SpecRecord {
    /// The spec of a freshly created run record.
    pub fn of(run: &RunRecord) -> Self {
        Self {
            template: run.spec.template.clone(),
            backend: run.backend.clone(),
            command: run.spec.command.clone(),
            cwd: run.spec.cwd.clone(),
            env: run.spec.env.clone(),
            secret_names: run.secret_names.clone(),
            artifacts: run.spec.artifacts.clone(),
            limits: run.limits,
            network: run.spec.network,
            keep_sandbox: run.spec.keep_sandbox,
            best_effort: run.spec.best_effort.clone(),
            labels: run.spec.labels.clone(),
            idempotency_key: run.spec.idempotency_key.clone(),
        }
    }
}

/// One output stream of the command, as the engine saw it (after secret masking).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StreamSummary {
    /// Every byte the command wrote to the stream (after masking).
    pub total_bytes: u64,
    /// Bytes stored as `stdout`/`stderr` events.
    pub stored_bytes: u64,
    /// Bytes dropped after the stream's cap (`total - stored`).
    pub dropped_bytes: u64,
    /// sha256 of all `total_bytes`, hex: attests the output even where events dropped it.
    pub sha256: String,
}

/// Both output streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputSummary {
    /// Standard output.
    pub stdout: StreamSummary,
    /// Standard error.
    pub stderr: StreamSummary,
}
