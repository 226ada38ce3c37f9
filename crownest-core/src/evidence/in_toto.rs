//! The in-toto Statement v1 view of a bundle, with a SLSA Provenance v1 predicate.
//!
//! Subjects (v2): every collected artifact (name = its requested path), each output stream
//! the command wrote (`logs/stdout`, `logs/stderr`, digest = sha256 of every byte the
//! command wrote, dropped bytes included), and the bundle itself
//! (`crownest-evidence/<runId>.json`, digest = [`EvidenceBundle::digest`]), so every
//! Statement has at least one subject, whatever the outcome. v1 and v1.1 bundles keep the
//! view they were signed with (artifacts only).

use serde_json::{Value, json};

use super::{EVIDENCE_SCHEMA_V1, EvidenceBundle};

/// `predicate.buildDefinition.buildType`.
pub(super) const BUILD_TYPE: &str = "https://crownest.dev/workspace-run/v1";

impl EvidenceBundle {
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
    /// signed with: limits added to `Limits` since (`pathBytes`) are left out of it.
    fn limits_parameter(&self) -> Value {
        let mut limits = json!(self.limits);
        if self.schema == EVIDENCE_SCHEMA_V1
            && let Some(map) = limits.as_object_mut()
        {
            map.remove("pathBytes");
        }
        limits
    }

    /// The Statement's subjects (see the module docs); `digest` is the bundle's.
    fn subjects(&self, digest: &crate::ids::Sha256Digest) -> Vec<Value> {
        let mut subjects: Vec<Value> = self
            .artifacts
            .iter()
            .map(|a| json!({"name": a.path, "digest": {"sha256": a.sha256}}))
            .collect();
        if !self.is_v2() {
            return subjects;
        }
        if let Some(output) = &self.output {
            for (name, stream) in [
                ("logs/stdout", &output.stdout),
                ("logs/stderr", &output.stderr),
            ] {
                if stream.total_bytes > 0 {
                    subjects.push(json!({"name": name, "digest": {"sha256": stream.sha256}}));
                }
            }
        }
        subjects.push(json!({
            "name": format!("crownest-evidence/{}.json", self.run_id),
            "digest": {"sha256": digest},
        }));
        subjects
    }

    /// An in-toto Statement v1 with a SLSA Provenance v1 predicate.
    pub fn to_in_toto(&self) -> Value {
        // The bundle's digest names it twice (a subject and the byproduct): hash it once.
        let digest = self.digest();
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
        let mut internal = serde_json::Map::new();
        internal.insert("limits".into(), self.limits_parameter());
        internal.insert("isolation".into(), json!(self.isolation));
        internal.insert("templateIdentity".into(), json!(self.template.identity));
        if self.is_v2() {
            external.insert("network".into(), json!(self.network));
            external.insert("artifacts".into(), json!(self.artifacts_requested));
            internal.insert("output".into(), json!(self.output));
            internal.insert("sandbox".into(), json!(self.sandbox));
        }
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": self.subjects(&digest),
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": external,
                    "internalParameters": internal,
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
                        "digest": {"sha256": digest},
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
}
