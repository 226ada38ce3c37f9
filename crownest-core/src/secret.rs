//! Secrets of a run (DESIGN §2.1 `secrets`) and the one type that carries their values.
//!
//! A run has two kinds of variables:
//!
//! * `env`: plain settings (`CI=true`, `PYTHONPATH=src`). Names **and** values are
//!   provenance: they are stored in the run record and the Evidence Bundle and are never
//!   masked in output.
//! * `secrets`: values the command needs but nobody may read back (tokens, keys). Where a
//!   secret value goes, and where it never goes:
//!
//! | place | secret value |
//! |---|---|
//! | the memory of the engine that created the run, from `create` to `start`, then its driver's until the run ends | yes (nowhere else: a run whose secrets were lost, e.g. by a host restart, ends like any other reclaimed run) |
//! | the command's environment ([`ExecRequest::secrets`](crate::ExecRequest::secrets)) | yes; each backend documents how it delivers them (the Docker backend keeps them out of the container's config) |
//! | stdout / stderr events | masked as `***` |
//! | events, evidence, the run record, the store's files | never; only the **names** are recorded ([`RunRecord::secret_names`](crate::RunRecord::secret_names)) |
//! | hashes | never: a hash of a short secret with a published salt is recovered by a dictionary in seconds |
//!
//! **Masking only guards against accidental echo.** The engine replaces every exact
//! occurrence of a secret value in stdout/stderr with `***` (also across chunk boundaries),
//! so a test log that prints its configuration does not leak a token. A command that wants
//! to reveal a secret can always do so (printed reversed, base64-encoded, one character per
//! line, written into an artifact, sent over the network): the sandbox runs code the secret
//! was handed to, and masking is not a boundary against it.
//!
//! [`SecretValue`] has no `Serialize` and a redacting `Debug`, so a secret cannot reach a
//! serialized spec, record, event or bundle, or a log line, by accident. The one place a
//! value is written out on purpose is [`RunSpec::to_request_json`](crate::RunSpec::to_request_json),
//! the body a client sends to create a run.

use serde::Deserialize;

/// A secret value. `Debug` prints `SecretValue(***)`; there is no `Display` and no
/// `Serialize`. [`expose`](Self::expose) reads it (to hand it to a command or a mask).
///
/// Deserializes from a JSON string (the `secrets` map of a create request).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Never log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Largest secret value, in bytes (well below Linux's 128 KiB limit on one environment
/// string, so a secret always fits the command's environment).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Most secrets a run may have.
pub const MAX_SECRETS: usize = 128;

/// Largest sum of a run's secret values, in bytes (the whole environment of a command must
/// fit Linux's argument space, about 2 MiB with argv).
pub const MAX_SECRETS_TOTAL_BYTES: usize = 256 * 1024;

/// True when `name` is a portable variable name, `[A-Za-z_][A-Za-z0-9_]*`: every shell can
/// export it (the Docker backend's launcher does).
pub fn is_portable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretValue::new("hunter2");
        assert_eq!(format!("{s:?}"), "SecretValue(***)");
        let map = std::collections::BTreeMap::from([("K".to_owned(), s.clone())]);
        assert!(!format!("{map:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn deserializes_from_a_string() {
        let s: SecretValue = serde_json::from_str("\"abc\"").unwrap_or_else(|_| "x".into());
        assert_eq!(s.expose(), "abc");
    }

    #[test]
    fn portable_names() {
        for ok in ["A", "_", "API_TOKEN", "a1", "_9"] {
            assert!(is_portable_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "Ä", "A\0"] {
            assert!(!is_portable_name(bad), "{bad:?}");
        }
    }
}
