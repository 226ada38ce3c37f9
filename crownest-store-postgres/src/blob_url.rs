//! Where blob bytes live: [`BlobLocation`] (a directory, or an object store named by a
//! [`BlobUrl`]), its parse errors ([`BlobUrlError`]) and the opening of the object store.
//!
//! | form | backend | needs |
//! |---|---|---|
//! | a plain path (`/var/lib/crownest/blobs`) | the directory backend (files fsynced and renamed; the SQLite store's layout) | nothing |
//! | `file:///abs/dir` | `object_store`'s `LocalFileSystem` rooted at `/abs/dir` (fsync on; the same layout, so a directory can be opened either way) | nothing |
//! | `s3://bucket[/prefix]` (also `s3a://`) | `object_store`'s `AmazonS3`, built `from_env` (`AWS_*` variables) | the `s3` cargo feature |
//! | `gs://bucket[/prefix]` | `GoogleCloudStorage`, built `from_env` (`GOOGLE_*` variables) | the `gcp` cargo feature |
//! | `az://container[/prefix]` (also `azure://`, `abfs://`, `abfss://`) | `MicrosoftAzure`, built `from_env` (`AZURE_*` variables) | the `azure` cargo feature |

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crownest_core::{Error, Result};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

/// Where a [`crate::PostgresStore`] keeps blob bytes and staged-transfer chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobLocation {
    /// A directory on this host (or a shared filesystem), through the directory backend.
    Dir(PathBuf),
    /// An object store (`file://`, `s3://`, `gs://`, `az://`), through `object_store`.
    Url(BlobUrl),
}

impl BlobLocation {
    /// A URL (anything with `://`) or else a directory path.
    ///
    /// ```
    /// use crownest_store_postgres::BlobLocation;
    /// assert!(matches!(BlobLocation::parse("/srv/blobs")?, BlobLocation::Dir(_)));
    /// assert!(matches!(BlobLocation::parse("file:///srv/blobs")?, BlobLocation::Url(_)));
    /// assert!(BlobLocation::parse("ftp://host/blobs").is_err());
    /// # Ok::<(), crownest_store_postgres::BlobUrlError>(())
    /// ```
    pub fn parse(s: &str) -> std::result::Result<Self, BlobUrlError> {
        if s.contains("://") {
            BlobUrl::parse(s).map(Self::Url)
        } else {
            Ok(Self::Dir(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::Url(u) => write!(f, "{u}"),
        }
    }
}

/// The kind of object store a [`BlobUrl`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobScheme {
    /// `file:///abs/dir`: `LocalFileSystem`.
    File,
    /// `s3://bucket/prefix`: Amazon S3 or an S3-compatible store.
    S3,
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs,
    /// `az://container/prefix`: Azure Blob Storage.
    Azure,
}

impl BlobScheme {
    /// The cargo feature of `crownest-store-postgres` that enables it (`None`: always there).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::File => None,
            Self::S3 => Some("s3"),
            Self::Gcs => Some("gcp"),
            Self::Azure => Some("azure"),
        }
    }

    fn enabled(self) -> bool {
        match self {
            Self::File => true,
            Self::S3 => cfg!(feature = "s3"),
            Self::Gcs => cfg!(feature = "gcp"),
            Self::Azure => cfg!(feature = "azure"),
        }
    }
}

/// A checked object-store URL (see the [crate docs](crate#blobs) for the forms). `Display` and
/// `Debug` never print a password the URL may hold.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobUrl {
    url: Url,
    scheme: BlobScheme,
}

impl std::fmt::Debug for BlobUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlobUrl").field(&self.to_string()).finish()
    }
}

impl std::fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

fn redact_url(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        shown.to_string()
    } else {
        url.to_string()
    }
}

/// Shows an unparsed URL without its password (`scheme://user:***@...`).
fn redact_str(s: &str) -> String {
    match Url::parse(s) {
        Ok(u) => redact_url(&u),
        Err(_) => match (s.find("://"), s.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                let userinfo = &s[start + 3..at];
                match userinfo.find(':') {
                    Some(colon) => format!("{}:***{}", &s[..start + 3 + colon], &s[at..]),
                    None => s.to_owned(),
                }
            }
            _ => s.to_owned(),
        },
    }
}

/// A blob URL that cannot be used: which URL (password hidden) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob URL {url}: {problem}")]
pub struct BlobUrlError {
    /// The URL as given, its password (if any) replaced by `***`.
    pub url: String,
    /// What is wrong with it.
    pub problem: BlobUrlProblem,
}

/// What is wrong with a blob URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobUrlProblem {
    /// It does not parse as a URL.
    #[error("not a URL ({0})")]
    Malformed(String),
    /// A scheme no backend serves.
    #[error("unsupported scheme {0:?} (supported: file, s3, gs, az)")]
    UnsupportedScheme(String),
    /// A scheme whose backend is behind a cargo feature this build lacks.
    #[error("scheme {scheme:?} needs crownest-store-postgres built with the {feature:?} feature")]
    FeatureDisabled {
        /// The URL's scheme.
        scheme: String,
        /// The missing cargo feature.
        feature: &'static str,
    },
    /// A known scheme, used wrongly (a `file:` URL with a host or a relative path, a bucket
    /// missing, a query string...).
    #[error("{0}")]
    Invalid(String),
}

impl BlobUrl {
    /// Parses and checks an object-store URL (nothing is contacted).
    pub fn parse(s: &str) -> std::result::Result<Self, BlobUrlError> {
        let fail = |problem| BlobUrlError {
            url: redact_str(s),
            problem,
        };
        let url = Url::parse(s).map_err(|e| fail(BlobUrlProblem::Malformed(e.to_string())))?;
        let scheme = match url.scheme() {
            "file" => BlobScheme::File,
            "s3" | "s3a" => BlobScheme::S3,
            "gs" => BlobScheme::Gcs,
            "az" | "azure" | "abfs" | "abfss" => BlobScheme::Azure,
            other => return Err(fail(BlobUrlProblem::UnsupportedScheme(other.to_owned()))),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(fail(BlobUrlProblem::Invalid(
                "a query string or fragment is not allowed".into(),
            )));
        }
        if scheme == BlobScheme::File {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(fail(BlobUrlProblem::Invalid(
                    "a file URL names a directory on this host: file:///abs/dir".into(),
                )));
            }
            if url.to_file_path().is_err() || url.path() == "/" {
                return Err(fail(BlobUrlProblem::Invalid(
                    "a file URL needs an absolute directory below /: file:///abs/dir".into(),
                )));
            }
        } else if url.host_str().is_none_or(str::is_empty) {
            return Err(fail(BlobUrlProblem::Invalid(format!(
                "no bucket or container: {}://NAME/prefix",
                url.scheme()
            ))));
        }
        if let Some(feature) = scheme.feature().filter(|_| !scheme.enabled()) {
            return Err(fail(BlobUrlProblem::FeatureDisabled {
                scheme: url.scheme().to_owned(),
                feature,
            }));
        }
        if ObjectPath::from_url_path(url.path()).is_err() {
            return Err(fail(BlobUrlProblem::Invalid(
                "the path is not a valid object-store prefix".into(),
            )));
        }
        Ok(Self { url, scheme })
    }

    /// Which kind of store it names.
    pub fn scheme(&self) -> BlobScheme {
        self.scheme
    }

    /// For `file:` URLs, the directory.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self.scheme {
            BlobScheme::File => self.url.to_file_path().ok(),
            _ => None,
        }
    }

    /// The key prefix inside the bucket or container (empty for `file:` URLs, whose path is
    /// the root directory).
    pub(crate) fn prefix(&self) -> ObjectPath {
        match self.scheme {
            BlobScheme::File => ObjectPath::default(),
            _ => ObjectPath::from_url_path(self.url.path()).unwrap_or_default(),
        }
    }

    /// Opens the store: `LocalFileSystem` (creating the directory and its layout), or the
    /// cloud store's builder `from_env` with this URL. Nothing is contacted over the network.
    pub(crate) fn open(&self) -> Result<OpenedStore> {
        let failed =
            |e: object_store::Error| Error::store(format!("opening the object store at {self}"), e);
        match self.scheme {
            BlobScheme::File => {
                let dir = self.local_dir().ok_or_else(|| {
                    Error::invalid("blob_url", format!("{self} names no local directory"))
                })?;
                crownest_core::store::blob_dir::BlobDir::new(&dir)
                    .create()
                    .map_err(|e| {
                        Error::store(format!("creating the blob directory {}", dir.display()), e)
                    })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(failed)?
                    .with_fsync(true);
                Ok(OpenedStore {
                    store: Arc::new(fs),
                    prefix: self.prefix(),
                    local_dir: Some(dir),
                })
            }
            #[cfg(feature = "s3")]
            BlobScheme::S3 => Ok(OpenedStore {
                store: Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(self.url.as_str())
                        .build()
                        .map_err(failed)?,
                ),
                prefix: self.prefix(),
                local_dir: None,
            }),
            #[cfg(feature = "gcp")]
            BlobScheme::Gcs => Ok(OpenedStore {
                store: Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(self.url.as_str())
                        .build()
                        .map_err(failed)?,
                ),
                prefix: self.prefix(),
                local_dir: None,
            }),
            #[cfg(feature = "azure")]
            BlobScheme::Azure => Ok(OpenedStore {
                store: Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(self.url.as_str())
                        .build()
                        .map_err(failed)?,
                ),
                prefix: self.prefix(),
                local_dir: None,
            }),
            #[allow(unreachable_patterns)]
            other => Err(Error::invalid(
                "blob_url",
                format!(
                    "{self}: needs crownest-store-postgres built with the {:?} feature",
                    other.feature().unwrap_or("?")
                ),
            )),
        }
    }
}

impl FromStr for BlobUrl {
    type Err = BlobUrlError;
    fn from_str(s: &str) -> std::result::Result<Self, BlobUrlError> {
        Self::parse(s)
    }
}

/// An opened object store, the key prefix under which the layout lives, and for `file:`
/// URLs the directory (for the housekeeping the object-store API cannot see).
pub(crate) struct OpenedStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: ObjectPath,
    pub(crate) local_dir: Option<PathBuf>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn problem(s: &str) -> BlobUrlProblem {
        BlobUrl::parse(s).unwrap_err().problem
    }

    #[test]
    fn urls_are_checked_and_errors_name_the_url() {
        let ok = BlobUrl::parse("file:///srv/crownest/blobs").unwrap();
        assert_eq!(ok.scheme(), BlobScheme::File);
        assert_eq!(ok.local_dir(), Some(PathBuf::from("/srv/crownest/blobs")));
        assert!(ok.prefix().is_root());

        let e = BlobUrl::parse("ftp://host/blobs").unwrap_err();
        assert_eq!(e.problem, BlobUrlProblem::UnsupportedScheme("ftp".into()));
        assert!(e.to_string().contains("ftp://host/blobs"), "{e}");
        assert!(matches!(problem("not a url"), BlobUrlProblem::Malformed(_)));
        assert!(matches!(
            problem("file://host/x"),
            BlobUrlProblem::Invalid(_)
        ));
        assert!(matches!(problem("file:///"), BlobUrlProblem::Invalid(_)));
        assert!(matches!(
            problem("file:///x?y=1"),
            BlobUrlProblem::Invalid(_)
        ));
        assert!(matches!(
            problem("s3:///prefix"),
            BlobUrlProblem::Invalid(_)
        ));
        // A password never shows in the error.
        let e = BlobUrl::parse("ftp://me:s3cr3t@host/x").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(e.url.contains("me:***@host"), "{e}");
    }

    #[test]
    fn cloud_schemes_need_their_feature() {
        for (url, scheme, feature) in [
            ("s3://bucket/crownest", BlobScheme::S3, "s3"),
            ("gs://bucket/crownest", BlobScheme::Gcs, "gcp"),
            ("az://container/crownest", BlobScheme::Azure, "azure"),
        ] {
            match BlobUrl::parse(url) {
                Ok(u) => {
                    assert!(scheme.enabled(), "{url}");
                    assert_eq!(u.scheme(), scheme);
                    assert_eq!(u.prefix().as_ref(), "crownest");
                }
                Err(e) => {
                    assert!(!scheme.enabled(), "{url}: {e}");
                    assert!(
                        matches!(e.problem, BlobUrlProblem::FeatureDisabled { feature: f, .. } if f == feature),
                        "{e}"
                    );
                    assert!(e.to_string().contains(url), "{e}");
                }
            }
        }
    }

    /// With a cloud feature on, the store is built from the URL and the environment without
    /// contacting anything (credentials are resolved on first use).
    #[cfg(feature = "s3")]
    #[test]
    fn an_s3_url_opens_a_store_under_its_prefix() {
        let opened = BlobUrl::parse("s3://crownest-test-bucket/a/prefix")
            .unwrap()
            .open()
            .unwrap();
        assert_eq!(opened.prefix.as_ref(), "a/prefix");
        assert!(opened.local_dir.is_none());
        assert!(opened.store.to_string().contains("crownest-test-bucket"));
    }

    #[test]
    fn locations_are_paths_or_urls() {
        assert_eq!(
            BlobLocation::parse("/srv/blobs").unwrap(),
            BlobLocation::Dir("/srv/blobs".into())
        );
        assert!(matches!(
            BlobLocation::parse("file:///srv/blobs").unwrap(),
            BlobLocation::Url(_)
        ));
        assert!(BlobLocation::parse("gopher://x/y").is_err());
    }
}
