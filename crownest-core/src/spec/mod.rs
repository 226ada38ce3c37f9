//! What a client asks for: [`RunSpec`] and its parts, with validation (DESIGN §2.1, §7).
//!
//! Specs are deny-by-default: `RunSpec::new(command)` inherits no environment, has no
//! secrets, no network, no artifacts, closed stdin, the default limits and no kept sandbox.
//!
//! `env` holds plain settings (recorded by name and value); `secrets` holds values that are
//! masked in output and never stored (see [`crate::secret`]).
//!
//! Files: this one (the spec and its builders), `limits.rs` ([`Limits`] and their
//! overrides), `validate.rs` ([`RunSpec::validate`]), `path.rs` ([`WorkspacePath`], the
//! one rule for a path inside `/workspace`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::capability::{Capability, Requirement};
use crate::secret::SecretValue;

mod limits;
mod path;
mod validate;

pub use limits::{LimitOverrides, Limits};
pub use path::{WorkspacePath, WorkspacePathError};

/// Network access for the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network (the default). Backends that cannot enforce it report so.
    #[default]
    None,
    /// Network access as the backend provides it.
    Enabled,
}

/// The longest a sandbox may be kept after its run: 7 days.
pub const MAX_KEEP_SANDBOX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Keep the sandbox after the run for `ttl_ms` (at most [`MAX_KEEP_SANDBOX_TTL_MS`]), then
/// destroy it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepSandbox {
    /// How long to keep it, in milliseconds.
    pub ttl_ms: u64,
}

/// One requested artifact path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactRequest {
    /// Relative path inside `/workspace` (validated lexically at create time).
    pub path: String,
    /// A missing required artifact fails the run with `missing_required_artifact`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// What a client asks for (DESIGN §2.1). Wire format: camelCase JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSpec {
    /// Template name (default `python-node`).
    #[serde(default = "default_template")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]+$"))]
    pub template: String,
    /// Backend name; `None` = the engine default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]+$"))]
    pub backend: Option<String>,
    /// argv; non-empty. A shell line is `["sh","-c","..."]`.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub command: Vec<String>,
    /// Relative working directory inside `/workspace`.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Plain settings (`CI=true`, `PYTHONPATH=src`). The host environment is NOT inherited.
    /// Names and values are provenance: stored in the run record and the Evidence Bundle,
    /// never masked in output. Put tokens and keys in `secrets`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret values, by variable name: passed to the command's environment, masked as
    /// `***` in output (an accidental-echo guard only), never stored; only the names are
    /// recorded (see [`crate::secret`]). Names are portable (`[A-Za-z_][A-Za-z0-9_]*`) and
    /// distinct from `env`'s.
    ///
    /// Never serialized: a serialized spec (inside a run record, a log line) carries no
    /// secret. A client sends them with [`RunSpec::to_request_json`].
    #[serde(default, skip_serializing)]
    pub secrets: BTreeMap<String, SecretValue>,
    /// Execution deadline override (same as `limits.timeoutMs`; this field wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Requested artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRequest>,
    /// Limit overrides.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitOverrides,
    /// Network access.
    #[serde(default)]
    pub network: Network,
    /// Keep the sandbox after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_sandbox: Option<KeepSandbox>,
    /// Explicit limits the run accepts as best-effort: on a backend that cannot enforce
    /// them the run goes on and the evidence records them in `isolation.notEnforced`,
    /// instead of being refused at create (see [`crate::capability`] for which fields are
    /// hard requirements). Only `memory_limit`, `pids_limit` and `network_isolation`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub best_effort: BTreeSet<Capability>,
    /// Free labels for the host app, copied into evidence.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Creating twice with the same key returns the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_template() -> String {
    "python-node".into()
}

fn default_cwd() -> String {
    ".".into()
}

impl RunSpec {
    /// A deny-by-default spec running `command` on the `python-node` template.
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            template: default_template(),
            backend: None,
            command: command.into_iter().map(Into::into).collect(),
            cwd: default_cwd(),
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            timeout_ms: None,
            artifacts: Vec::new(),
            limits: LimitOverrides::default(),
            network: Network::None,
            keep_sandbox: None,
            best_effort: BTreeSet::new(),
            labels: BTreeMap::new(),
            idempotency_key: None,
        }
    }

    /// Sets the backend.
    pub fn with_backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    /// Sets the template.
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.template = template.into();
        self
    }

    /// Sets the working directory.
    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Adds a plain environment variable (recorded with its value).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Adds a secret variable (masked in output, never stored; only its name is recorded).
    pub fn with_secret(mut self, name: impl Into<String>, value: impl Into<SecretValue>) -> Self {
        self.secrets.insert(name.into(), value.into());
        self
    }

    /// The JSON body of a create request: the serialized spec plus `secrets` with their
    /// values. This is the only serialization of a spec that carries secret values; send
    /// it to the engine's host and nowhere else.
    pub fn to_request_json(&self) -> serde_json::Value {
        let mut body = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if !self.secrets.is_empty()
            && let Some(obj) = body.as_object_mut()
        {
            let secrets = self
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_owned())))
                .collect();
            obj.insert("secrets".into(), serde_json::Value::Object(secrets));
        }
        body
    }

    /// Sets the execution deadline.
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Requests an artifact.
    pub fn with_artifact(mut self, path: impl Into<String>, required: bool) -> Self {
        self.artifacts.push(ArtifactRequest {
            path: path.into(),
            required,
        });
        self
    }

    /// Sets limit overrides.
    pub fn with_limits(mut self, limits: LimitOverrides) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the network mode.
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Keeps the sandbox for `ttl_ms` after the run.
    pub fn with_keep_sandbox(mut self, ttl_ms: u64) -> Self {
        self.keep_sandbox = Some(KeepSandbox { ttl_ms });
        self
    }

    /// Accepts `capability` as best-effort (see [`RunSpec::best_effort`]).
    pub fn with_best_effort(mut self, capability: Capability) -> Self {
        self.best_effort.insert(capability);
        self
    }

    /// What this spec asks of its backend, and how strictly (the table of
    /// [`crate::capability`]): explicit limits are hard unless `bestEffort` lists them,
    /// `network: enabled` and `keepSandbox` are hard, the default `network: none` and the
    /// engine's default limits are best-effort.
    pub fn requirements(&self) -> Vec<Requirement> {
        let explicit = |capability: Capability, field: &'static str, set: bool| Requirement {
            capability,
            field,
            hard: set && !self.best_effort.contains(&capability),
        };
        let mut out = vec![
            explicit(
                Capability::MemoryLimit,
                "limits.memoryBytes",
                self.limits.memory_bytes.is_some(),
            ),
            explicit(
                Capability::PidsLimit,
                "limits.pids",
                self.limits.pids.is_some(),
            ),
            match self.network {
                Network::None => Requirement {
                    capability: Capability::NetworkIsolation,
                    field: "network",
                    hard: false,
                },
                Network::Enabled => Requirement {
                    capability: Capability::NetworkAccess,
                    field: "network",
                    hard: true,
                },
            },
        ];
        if self.keep_sandbox.is_some() {
            out.push(Requirement {
                capability: Capability::KeepSandbox,
                field: "keepSandbox",
                hard: true,
            });
        }
        out
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}
