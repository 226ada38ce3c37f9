//! What a client asks for: [`RunSpec`] and its parts, with validation (DESIGN §2.1, §7).
//!
//! Specs are deny-by-default: `RunSpec::new(command)` inherits no environment, has no
//! secrets, no network, no artifacts, closed stdin, the default limits and no kept sandbox.
//!
//! `env` holds plain settings (recorded by name and value); `secrets` holds values that are
//! masked in output and never stored (see [`crate::secret`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::capability::{Capability, Requirement};
use crate::error::{Error, Result};
use crate::secret::{
    MAX_SECRET_BYTES, MAX_SECRETS, MAX_SECRETS_TOTAL_BYTES, SecretValue, is_portable_name,
};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

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

/// Keep the sandbox after the run for `ttl_ms`, then destroy it.
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

/// Resolved limits of a run. Every field has a default (DESIGN §7); a run may lower or
/// raise each one within the engine's maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Stored output bytes per stream (stdout, stderr); more is dropped with `output_truncated`.
    pub output_bytes_per_stream: u64,
    /// Bytes of one artifact.
    pub artifact_bytes_each: u64,
    /// Bytes of all artifacts of a run.
    pub artifact_bytes_total: u64,
    /// Extracted bytes of the archive.
    pub extracted_bytes: u64,
    /// Entries in the archive, directories implied by deeper paths included.
    pub entries: u64,
    /// Length of an entry path in bytes.
    pub path_length: u64,
    /// Components of an entry path.
    pub path_depth: u64,
    /// Bytes of all entry paths of the archive together, each implied directory's path
    /// included (as if it were written as an entry). Absent in records written before this
    /// limit existed, which read back with the default.
    #[serde(default = "default_path_bytes")]
    pub path_bytes: u64,
    /// Size of one PAX/GNU metadata record.
    pub metadata_record_bytes: u64,
    /// Maximum inflated/compressed ratio, checked after the first 10 MiB of output.
    pub compression_ratio: u64,
    /// Memory of the sandbox, in bytes (enforced where the backend can).
    pub memory_bytes: u64,
    /// Processes/threads in the sandbox (enforced where the backend can).
    pub pids: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Execution deadline in milliseconds (command time only).
    pub timeout_ms: u64,
    /// SIGTERM → SIGKILL grace in milliseconds.
    pub kill_grace_ms: u64,
    /// Budget for finalization (artifacts, destroy, evidence) in milliseconds.
    pub finalization_budget_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            output_bytes_per_stream: 64 * MIB,
            artifact_bytes_each: GIB,
            artifact_bytes_total: 4 * GIB,
            extracted_bytes: 4 * GIB,
            entries: 200_000,
            path_length: 4096,
            path_depth: 64,
            path_bytes: default_path_bytes(),
            metadata_record_bytes: MIB,
            compression_ratio: 200,
            memory_bytes: 2 * GIB,
            pids: 1024,
            open_files: 4096,
            timeout_ms: 600_000,
            kill_grace_ms: 2_000,
            finalization_budget_ms: 60_000,
        }
    }
}

fn default_path_bytes() -> u64 {
    64 * MIB
}

impl Limits {
    /// The engine maxima used when none are configured: 4× every default, and a 24 h timeout.
    pub fn default_maxima() -> Self {
        let d = Self::default();
        Self {
            output_bytes_per_stream: 16 * GIB,
            artifact_bytes_each: 16 * GIB,
            artifact_bytes_total: 64 * GIB,
            extracted_bytes: 64 * GIB,
            entries: 4_000_000,
            path_length: 4096,
            path_depth: 256,
            path_bytes: GIB,
            metadata_record_bytes: 16 * MIB,
            compression_ratio: 10_000,
            memory_bytes: 256 * GIB,
            pids: 65_536,
            open_files: 1 << 20,
            timeout_ms: 24 * 3600 * 1000,
            kill_grace_ms: 60_000,
            finalization_budget_ms: d.finalization_budget_ms * 10,
        }
    }

    fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("outputBytesPerStream", self.output_bytes_per_stream),
            ("artifactBytesEach", self.artifact_bytes_each),
            ("artifactBytesTotal", self.artifact_bytes_total),
            ("extractedBytes", self.extracted_bytes),
            ("entries", self.entries),
            ("pathLength", self.path_length),
            ("pathDepth", self.path_depth),
            ("pathBytes", self.path_bytes),
            ("metadataRecordBytes", self.metadata_record_bytes),
            ("compressionRatio", self.compression_ratio),
            ("memoryBytes", self.memory_bytes),
            ("pids", self.pids),
            ("openFiles", self.open_files),
            ("timeoutMs", self.timeout_ms),
            ("killGraceMs", self.kill_grace_ms),
            ("finalizationBudgetMs", self.finalization_budget_ms),
        ]
    }

    /// Applies a run's overrides on top of `self` (the engine defaults), refusing any value
    /// above `maxima` or equal to zero with a typed error.
    pub fn resolve(&self, overrides: &LimitOverrides, maxima: &Limits) -> Result<Limits> {
        let mut out = *self;
        macro_rules! apply {
            ($($f:ident),*) => {$(
                if let Some(v) = overrides.$f { out.$f = v; }
            )*};
        }
        apply!(
            output_bytes_per_stream,
            artifact_bytes_each,
            artifact_bytes_total,
            extracted_bytes,
            entries,
            path_length,
            path_depth,
            path_bytes,
            metadata_record_bytes,
            compression_ratio,
            memory_bytes,
            pids,
            open_files,
            timeout_ms,
            kill_grace_ms,
            finalization_budget_ms
        );
        for ((name, v), (_, max)) in out.fields().into_iter().zip(maxima.fields()) {
            if v == 0 {
                return Err(Error::invalid(
                    format!("limits.{name}"),
                    "must be greater than zero",
                ));
            }
            if v > max {
                return Err(Error::invalid(
                    format!("limits.{name}"),
                    format!("{v} is above the engine maximum {max}"),
                ));
            }
        }
        Ok(out)
    }
}

/// Per-run overrides of [`Limits`]; absent fields take the engine default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes_per_stream: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes_each: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_depth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_record_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalization_budget_ms: Option<u64>,
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

    /// Validates the spec lexically and resolves its limits against the engine's defaults
    /// and maxima.
    pub fn validate(&self, defaults: &Limits, maxima: &Limits) -> Result<Limits> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(Error::invalid("command", "must be a non-empty argv"));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(Error::invalid("command", "arguments must not contain NUL"));
        }
        if self.template.is_empty() || !is_name(&self.template) {
            return Err(Error::invalid("template", "must match [A-Za-z0-9._-]+"));
        }
        if let Some(b) = &self.backend
            && !is_name(b)
        {
            return Err(Error::invalid("backend", "must match [A-Za-z0-9._-]+"));
        }
        validate_relative_path(&self.cwd, true).map_err(|m| Error::invalid("cwd", m))?;
        for name in self.env.keys() {
            let ok = !name.is_empty()
                && !name.contains('=')
                && !name.contains('\0')
                && !name.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(Error::invalid(
                    "env",
                    format!("invalid variable name {name:?}"),
                ));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(Error::invalid("env", "values must not contain NUL"));
        }
        self.validate_secrets()?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.artifacts.iter().enumerate() {
            validate_relative_path(&a.path, false)
                .map_err(|m| Error::invalid(format!("artifacts[{i}].path"), m))?;
            if !seen.insert(normalize_relative(&a.path)) {
                return Err(Error::invalid(
                    format!("artifacts[{i}].path"),
                    format!("duplicate artifact path {:?}", a.path),
                ));
            }
        }
        if self.artifacts.len() > 1024 {
            return Err(Error::invalid("artifacts", "at most 1024 artifact paths"));
        }
        if let Some(k) = &self.keep_sandbox
            && k.ttl_ms == 0
        {
            return Err(Error::invalid(
                "keepSandbox.ttlMs",
                "must be greater than zero",
            ));
        }
        if let Some(c) = self
            .best_effort
            .iter()
            .find(|c| !Capability::BEST_EFFORT.contains(c))
        {
            return Err(Error::invalid(
                "bestEffort",
                format!(
                    "{c} cannot be best-effort (only memory_limit, pids_limit, network_isolation)"
                ),
            ));
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > 256)
        {
            return Err(Error::invalid("idempotencyKey", "must be 1..=256 bytes"));
        }
        let mut overrides = self.limits;
        if let Some(t) = self.timeout_ms {
            overrides.timeout_ms = Some(t);
        }
        defaults.resolve(&overrides, maxima)
    }
}

impl RunSpec {
    /// Secret names are portable and not also plain; values have no NUL and fit an
    /// environment string. Messages name the variable, never its value.
    fn validate_secrets(&self) -> Result<()> {
        if self.secrets.len() > MAX_SECRETS {
            return Err(Error::invalid(
                "secrets",
                format!("at most {MAX_SECRETS} secrets"),
            ));
        }
        for (name, value) in &self.secrets {
            if !is_portable_name(name) {
                return Err(Error::invalid(
                    "secrets",
                    format!("invalid secret name {name:?}: use [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if self.env.contains_key(name) {
                return Err(Error::invalid(
                    "secrets",
                    format!("{name:?} is both a plain env variable and a secret"),
                ));
            }
            if value.expose().contains('\0') {
                return Err(Error::invalid(
                    "secrets",
                    format!("the value of {name:?} contains NUL"),
                ));
            }
            if value.len() > MAX_SECRET_BYTES {
                return Err(Error::invalid(
                    "secrets",
                    format!("the value of {name:?} is longer than {MAX_SECRET_BYTES} bytes"),
                ));
            }
        }
        let total: usize = self.secrets.values().map(SecretValue::len).sum();
        if total > MAX_SECRETS_TOTAL_BYTES {
            return Err(Error::invalid(
                "secrets",
                format!("the values add up to more than {MAX_SECRETS_TOTAL_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lexical check of a client-supplied relative path (artifact paths, `cwd`): not empty,
/// not absolute, no `..`, no NUL, no backslash, at most 4096 bytes. `.` alone is allowed
/// only when `allow_root` (for `cwd`).
pub fn validate_relative_path(path: &str, allow_root: bool) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.len() > 4096 {
        return Err("longer than 4096 bytes".into());
    }
    if path.contains('\0') {
        return Err("contains NUL".into());
    }
    if path.contains('\\') {
        return Err("contains a backslash".into());
    }
    if path.starts_with('/') {
        return Err(format!(
            "{path:?} is absolute; paths are relative to /workspace"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} contains '..'"));
    }
    if !allow_root && normalize_relative(path).is_empty() {
        return Err(format!("{path:?} names the workspace root itself"));
    }
    Ok(())
}

/// Normalizes a validated relative path: drops empty and `.` components.
pub fn normalize_relative(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}
