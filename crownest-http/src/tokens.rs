//! Bearer tokens with scopes, kept as sha256 hashes: [`TokenSet`], [`TokenEntry`],
//! [`Scope`].
//!
//! # The tokens file
//!
//! JSON lines, one token each; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # crownest tokens: name, sha256 of the token, scopes
//! {"name":"ci","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","scopes":["submit","read"]}
//! {"name":"ops","sha256":"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752","scopes":["admin"]}
//! ```
//!
//! * `name`: a label for logs and error messages (`[A-Za-z0-9._-]`, 1 to 64 bytes), unique
//!   in the file.
//! * `sha256`: the lowercase hex sha256 of the token's UTF-8 bytes, unique in the file
//!   (`printf %s "$TOKEN" | sha256sum`). The token itself is never stored: whoever reads
//!   the file cannot use it to authenticate.
//! * `scopes`: a non-empty subset of `read`, `submit`, `admin` (see [`Scope`]).
//!
//! Unknown fields, unknown scopes, malformed digests and duplicates are refused with the
//! line number. `crownest token add NAME --scopes ...` mints a token, prints it once and
//! appends its line.

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::Method;
use crownest_core::Sha256Digest;
use serde::{Deserialize, Serialize};

/// What a token may do. Scopes are independent except `admin`, which allows everything.
///
/// | scope | routes |
/// |---|---|
/// | `read` | every `GET` and `HEAD` route but `/metrics`: runs, events, SSE, evidence, artifacts, transfer status, host key, OpenAPI |
/// | `submit` | `POST` and `PUT`: create, upload (direct, attach, staged), start, cancel |
/// | `admin` | everything, and what only operators do: `GET /metrics`, `DELETE /v1/runs/{id}` |
///
/// `/healthz` and `/readyz` need no token (they are routed outside authentication). A client that submits runs and follows them needs
/// `submit` and `read`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read runs, events, evidence and artifacts.
    Read,
    /// Create, feed, start and cancel runs.
    Submit,
    /// Everything, including metrics and deleting runs.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Submit, Scope::Admin];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// The scope a request needs, from its method and path (the one rule; see the table
    /// on [`Scope`]).
    pub fn required_for(method: &Method, path: &str) -> Scope {
        if path == "/metrics" || *method == Method::DELETE {
            Scope::Admin
        } else if *method == Method::GET || *method == Method::HEAD {
            Scope::Read
        } else {
            Scope::Submit
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token of a tokens file: its name, the sha256 of its bytes, its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// A label for logs and messages.
    pub name: String,
    /// sha256 of the token's UTF-8 bytes.
    pub sha256: Sha256Digest,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
}

impl TokenEntry {
    /// The entry of a known token (hashed here; the token is not kept).
    pub fn for_token(
        name: impl Into<String>,
        token: &str,
        scopes: impl IntoIterator<Item = Scope>,
    ) -> Self {
        Self {
            name: name.into(),
            sha256: Sha256Digest::of(token.as_bytes()),
            scopes: scopes.into_iter().collect(),
        }
    }

    /// A new random token (64 hex digits, 256 bits) and its entry. The token is returned
    /// once; only the entry is meant to be stored.
    pub fn mint(
        name: impl Into<String>,
        scopes: impl IntoIterator<Item = Scope>,
    ) -> (String, Self) {
        let token = crate::HttpConfig::generate_token();
        let entry = Self::for_token(name, &token, scopes);
        (token, entry)
    }

    /// True when this token may make a request that needs `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&needed)
    }

    /// The entry as one line of a tokens file (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(format!(
                "name {:?} must be 1 to 64 of [A-Za-z0-9._-]",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!("token {:?} has no scopes", self.name));
        }
        Ok(())
    }
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// A line is not a valid entry, or repeats a name or a digest.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The tokens a server accepts (see the module docs for the file format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

impl TokenSet {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a tokens file's text.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut set = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: TokenEntry = serde_json::from_str(line).map_err(|e| TokensError::Line {
                line: i + 1,
                message: e.to_string(),
            })?;
            set.push(entry).map_err(|message| TokensError::Line {
                line: i + 1,
                message,
            })?;
        }
        Ok(set)
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Adds an entry; refuses an invalid one, or one whose name or digest is already here.
    pub fn push(&mut self, entry: TokenEntry) -> Result<(), String> {
        entry.check()?;
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(format!("a token named {:?} already exists", entry.name));
        }
        if self.entries.iter().any(|e| e.sha256 == entry.sha256) {
            return Err(format!(
                "token {:?} has the same sha256 as another token",
                entry.name
            ));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a presented token, if any. Every entry is compared (in constant time
    /// per digest), so the answer's timing does not depend on which one matched.
    pub fn find(&self, token: &str) -> Option<&TokenEntry> {
        let presented = Sha256Digest::of(token.as_bytes());
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(e.sha256.as_str().as_bytes(), presented.as_str().as_bytes()) {
                found = Some(e);
            }
        }
        found
    }
}

/// Byte equality whose time depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/v1/runs", Scope::Read),
            (Method::GET, "/v1/runs/run_x/events/stream", Scope::Read),
            (Method::HEAD, "/v1/archives/abc", Scope::Read),
            (Method::GET, "/v1/transfers/xfer_x", Scope::Read),
            (Method::GET, "/v1/openapi.json", Scope::Read),
            (Method::POST, "/v1/runs", Scope::Submit),
            (Method::PUT, "/v1/runs/run_x/archive", Scope::Submit),
            (Method::PUT, "/v1/transfers/xfer_x", Scope::Submit),
            (Method::POST, "/v1/transfers/xfer_x/complete", Scope::Submit),
            (Method::POST, "/v1/runs/run_x/start", Scope::Submit),
            (Method::POST, "/v1/runs/run_x/cancel", Scope::Submit),
            (Method::GET, "/metrics", Scope::Admin),
            (Method::DELETE, "/v1/runs/run_x", Scope::Admin),
        ];
        for (method, path, want) in cases {
            assert_eq!(Scope::required_for(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn a_tokens_file_round_trips_and_finds_tokens_by_hash() {
        let (ci, ci_entry) = TokenEntry::mint("ci", [Scope::Submit, Scope::Read]);
        let (ops, ops_entry) = TokenEntry::mint("ops", [Scope::Admin]);
        let text = format!(
            "# comment\n\n{}\n{}\n",
            ci_entry.to_line(),
            ops_entry.to_line()
        );
        assert!(!text.contains(&ci) && !text.contains(&ops), "only hashes");
        let set = TokenSet::parse(&text).unwrap();
        assert_eq!(set.entries().len(), 2);
        let found = set.find(&ci).unwrap();
        assert_eq!(found.name, "ci");
        assert!(found.allows(Scope::Read) && found.allows(Scope::Submit));
        assert!(!found.allows(Scope::Admin));
        let admin = set.find(&ops).unwrap();
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        assert!(set.find("not-a-token").is_none());
        // The documented example digest is sha256("test").
        assert_eq!(
            TokenEntry::for_token("x", "test", [Scope::Read])
                .sha256
                .as_str(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let ok = TokenEntry::for_token("a", "t1", [Scope::Read]).to_line();
        let cases = [
            (format!("{ok}\n{{\"name\":\"b\"}}"), 2, "missing field"),
            (
                format!("{ok}\n{}", ok.replace("\"read\"", "\"write\"")),
                2,
                "unknown variant",
            ),
            (format!("{ok}\n{ok}"), 2, "already exists"),
            (
                TokenEntry::for_token("b c", "t2", [Scope::Read]).to_line(),
                1,
                "must be 1 to 64",
            ),
            (
                TokenEntry::for_token("b", "t2", []).to_line(),
                1,
                "no scopes",
            ),
            (
                ok.replace("\"name\"", "\"token\":\"t1\",\"name\""),
                1,
                "unknown field",
            ),
            (
                format!(
                    "{ok}\n{}",
                    TokenEntry::for_token("b", "t1", [Scope::Read]).to_line()
                ),
                2,
                "same sha256",
            ),
        ];
        for (text, line, needle) in cases {
            match TokenSet::parse(&text) {
                Err(TokensError::Line { line: l, message }) => {
                    assert_eq!(l, line, "{text}: {message}");
                    assert!(message.contains(needle), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
