//! [`RunSpec::validate`]: the lexical checks of a spec at create time and the resolution
//! of its limits.

use crate::capability::Capability;
use crate::error::{Error, Result};
use crate::secret::{
    MAX_SECRET_BYTES, MAX_SECRETS, MAX_SECRETS_TOTAL_BYTES, SecretValue, is_portable_name,
};

use super::{Limits, RunSpec, WorkspacePath};

impl RunSpec {
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
        WorkspacePath::parse(&self.cwd).map_err(|e| Error::invalid("cwd", e.to_string()))?;
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
            let path = WorkspacePath::parse_entry(&a.path)
                .map_err(|e| Error::invalid(format!("artifacts[{i}].path"), e.to_string()))?;
            if !seen.insert(path) {
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
            && !(1..=super::MAX_KEEP_SANDBOX_TTL_MS).contains(&k.ttl_ms)
        {
            return Err(Error::invalid(
                "keepSandbox.ttlMs",
                format!(
                    "must be 1..={} (7 days): a kept sandbox holds disk, memory and a container until it is swept",
                    super::MAX_KEEP_SANDBOX_TTL_MS
                ),
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
