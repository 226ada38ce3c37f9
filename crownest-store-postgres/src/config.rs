//! [`PostgresConfig`]: where the database and the blob bytes are, and the pool's knobs.

use std::path::Path;
use std::time::Duration;

use crownest_core::{Error, Result};

use crate::blob_url::{BlobLocation, BlobUrl, BlobUrlError};

/// How a [`crate::PostgresStore`] is opened.
///
/// `PostgresConfig::new(url, blob_dir)` gives (and [`with_blob_url`](Self::with_blob_url)
/// puts the blobs in an object store instead):
///
/// | knob | default | meaning |
/// |---|---|---|
/// | `url` | required | a libpq-style connection string: `postgres://user[:password]@host[:port]/database[?options]` or `host=... user=... dbname=...` (a `host` that is a directory is a unix socket) |
/// | `blobs` | required | where archive and artifact bytes and staged-transfer chunks live: a directory ([`BlobLocation::Dir`], from `new`) or an object store ([`BlobLocation::Url`]: `file:///abs/dir`, `s3://bucket/prefix`, `gs://...`, `az://...`; see the [crate docs](crate#blobs)) |
/// | `schema` | none (the server's `search_path`, normally `public`) | a PostgreSQL schema of its own: created when missing, put first on every connection's `search_path`; several stores can share one database this way (the tests give each case its own) |
/// | `pool_size` | 16 | connections kept by this process |
/// | `connect_timeout` | 10 s | how long opening one connection may take |
/// | `pool_wait_timeout` | 30 s | how long a call waits for a free pooled connection before failing with `Error::Store` |
///
/// `Debug` never prints the password of `url`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Connection string.
    pub url: String,
    /// Where blob bytes and transfer chunks live.
    pub blobs: BlobLocation,
    /// Schema of the store's tables (`None`: the server's `search_path`).
    pub schema: Option<String>,
    /// Pooled connections.
    pub pool_size: usize,
    /// Timeout for opening one connection.
    pub connect_timeout: Duration,
    /// Timeout for waiting for a pooled connection.
    pub pool_wait_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("blobs", &self.blobs)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .finish()
    }
}

/// The connection string with any password replaced by `***` (URL and key=value forms).
pub fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        // userinfo ends at the last '@' before the first '/'.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!("{scheme}{}:***{}", &userinfo[..colon], &rest[at..]);
            }
        }
        return url.to_owned();
    }
    url.split(' ')
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PostgresConfig {
    /// A configuration with the defaults listed above, blobs in the directory `blob_dir`
    /// (a path, never parsed as a URL: see [`with_blob_url`](Self::with_blob_url)).
    pub fn new(url: impl Into<String>, blob_dir: impl AsRef<Path>) -> Self {
        Self {
            url: url.into(),
            blobs: BlobLocation::Dir(blob_dir.as_ref().to_path_buf()),
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            pool_wait_timeout: Duration::from_secs(30),
        }
    }

    /// A configuration with the defaults listed above and the blobs at `blobs` (a
    /// directory or an object store; [`BlobLocation::parse`] reads either from a string,
    /// as a command line gives it).
    ///
    /// ```
    /// use crownest_store_postgres::{BlobLocation, PostgresConfig};
    /// let blobs = BlobLocation::parse("file:///srv/crownest/blobs")?;
    /// let config = PostgresConfig::new_with_blobs("postgres://db/crownest", blobs);
    /// assert!(matches!(config.blobs, BlobLocation::Url(_)));
    /// # Ok::<(), crownest_store_postgres::BlobUrlError>(())
    /// ```
    pub fn new_with_blobs(url: impl Into<String>, blobs: BlobLocation) -> Self {
        Self::new(url, "").with_blobs(blobs)
    }

    /// Puts the blobs in the object store `url` names (`file:///abs/dir`, or with the
    /// matching cargo feature `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, credentials from the environment), instead of `blob_dir`.
    /// A malformed URL or one this build cannot serve is a [`BlobUrlError`] naming it.
    ///
    /// ```
    /// use crownest_store_postgres::{BlobUrlProblem, PostgresConfig};
    /// let c = PostgresConfig::new("postgres://db/crownest", "/unused")
    ///     .with_blob_url("file:///srv/crownest/blobs")?;
    /// let bad = PostgresConfig::new("postgres://db/crownest", "/unused")
    ///     .with_blob_url("ftp://files/blobs")
    ///     .unwrap_err();
    /// assert!(matches!(bad.problem, BlobUrlProblem::UnsupportedScheme(_)));
    /// assert!(bad.to_string().contains("ftp://files/blobs"));
    /// # Ok::<(), crownest_store_postgres::BlobUrlError>(())
    /// ```
    pub fn with_blob_url(mut self, url: &str) -> std::result::Result<Self, BlobUrlError> {
        self.blobs = BlobLocation::Url(BlobUrl::parse(url)?);
        Ok(self)
    }

    /// Sets where the blobs live ([`BlobLocation::parse`] reads a path or a URL).
    pub fn with_blobs(mut self, blobs: BlobLocation) -> Self {
        self.blobs = blobs;
        self
    }

    /// Sets `schema` (checked when the store opens: lowercase letters, digits and `_`,
    /// not starting with a digit, at most 63 characters).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets `pool_size` (at least 1).
    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Sets `connect_timeout`.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets `pool_wait_timeout`.
    pub fn with_pool_wait_timeout(mut self, d: Duration) -> Self {
        self.pool_wait_timeout = d;
        self
    }

    /// The schema name, checked (it is spliced into SQL as an identifier).
    pub(crate) fn checked_schema(&self) -> Result<Option<&str>> {
        let Some(s) = self.schema.as_deref() else {
            return Ok(None);
        };
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.as_bytes()[0].is_ascii_digit()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Some(s))
        } else {
            Err(Error::invalid(
                "schema",
                format!("{s:?} is not a plain lowercase identifier ([a-z_][a-z0-9_]*, at most 63)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cr3t@db:5432/crownest"),
            "postgres://app:***@db:5432/crownest"
        );
        assert_eq!(
            redact("postgresql://app@db/crownest"),
            "postgresql://app@db/crownest"
        );
        assert_eq!(
            redact("host=db user=app password=s3cr3t dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        let c = PostgresConfig::new("postgres://a:pw@h/d", "/tmp/b");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn schema_names_are_checked() {
        let c = |s: &str| PostgresConfig::new("postgres://h/d", "/b").with_schema(s);
        assert!(c("crownest_1").checked_schema().is_ok());
        for bad in ["", "1abc", "a-b", "Upper", "a;drop", &"x".repeat(64)] {
            assert!(c(bad).checked_schema().is_err(), "{bad:?}");
        }
    }
}
