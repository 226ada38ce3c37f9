//! Where the commands send their requests: the local engine over the store in `--home`, or a
//! `crownest serve` (or any host mounting `crownest_http::router`) through
//! [`crownest_http::Client`] when `--server URL` is given.
//!
//! Each command has one code path: it calls the handful of operations below, and both sides
//! answer with the engine's own types and errors (the client maps the API's error bodies back
//! to `crownest_core::Error`), so exit codes are the same in both modes.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use crownest_core::store::{BlobReader, RunQuery};
use crownest_core::{
    ArtifactId, Error, Event, EvidenceBundle, RunId, RunRecord, RunSpec, Sha256Digest,
    WorkspaceRuns,
};
use crownest_http::Client;
use futures::Stream;

/// A stream of a run's events (replay, then live; ends after `terminal`).
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

/// What the global options point at: the home (local) or a server (`--server`).
#[derive(Debug)]
pub(crate) struct Target {
    home: Option<PathBuf>,
    server: Option<Client>,
}

impl Target {
    /// From `--home`, `--server`, `--token` and `--ca-cert` (an empty `--server` means
    /// local).
    pub(crate) fn new(
        home: Option<PathBuf>,
        server: Option<String>,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let token = token.filter(|t| !t.is_empty());
        let server = match server.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(url) => match Connection::remote(url.trim(), token, ca_cert)? {
                Connection::Remote(c) => Some(c),
                Connection::Local(_) => None,
            },
        };
        Ok(Self { home, server })
    }

    /// The server's client, with `--server`.
    pub(crate) fn server(&self) -> Option<&Client> {
        self.server.as_ref()
    }

    /// The home directory (local mode).
    pub(crate) fn home(&self) -> anyhow::Result<PathBuf> {
        crate::home::resolve(self.home.clone())
    }

    /// The server's client, or the local engine opened over the home (recovery runs).
    pub(crate) async fn open(&self) -> anyhow::Result<Connection> {
        match &self.server {
            Some(c) => Ok(Connection::Remote(c.clone())),
            None => Ok(Connection::Local(crate::home::open(&self.home()?).await?)),
        }
    }
}

/// The local engine, or a remote server.
#[derive(Debug, Clone)]
pub(crate) enum Connection {
    /// An engine over the store in `--home` (recovery ran when it opened).
    Local(WorkspaceRuns),
    /// A server, through the typed HTTP client.
    Remote(Client),
}

impl Connection {
    /// `--server URL` with its token, trusting the CA certificates of `ca_cert` (PEM) too.
    pub(crate) fn remote(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(crate::exit::usage(format!(
                "--server {url:?}: give a URL like http://127.0.0.1:7700"
            )));
        }
        let client = match ca_cert {
            None => Client::new(url, token)?,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    crate::exit::usage(format!("--ca-cert {}: {e}", path.display()))
                })?;
                Client::with_ca_pem(url, token, &pem)
                    .map_err(|e| crate::exit::usage(format!("--ca-cert {}: {e}", path.display())))?
            }
        };
        Ok(Self::Remote(client))
    }

    /// Creates a run.
    pub(crate) async fn create(&self, spec: RunSpec) -> Result<RunRecord, Error> {
        match self {
            Self::Local(e) => e.create(spec).await,
            Self::Remote(c) => c.create_run(&spec).await,
        }
    }

    /// One run's record.
    pub(crate) async fn get(&self, id: &RunId) -> Result<RunRecord, Error> {
        match self {
            Self::Local(e) => e.get(id).await,
            Self::Remote(c) => c.get_run(id).await,
        }
    }

    /// Runs, newest first, filtered by `query` (at most `query.limit`).
    pub(crate) async fn list(&self, query: &RunQuery) -> Result<Vec<RunRecord>, Error> {
        match self {
            Self::Local(e) => e.list(query).await,
            Self::Remote(c) => {
                // The server caps a page; follow the cursor up to `limit`.
                let limit = query.limit;
                let mut out = Vec::new();
                let mut page_query = query.clone();
                while out.len() < limit {
                    page_query.limit = (limit - out.len()).min(500);
                    let page = c.list_runs_where(&page_query).await?;
                    out.extend(page.runs);
                    match page.next_cursor {
                        Some(next) => page_query.before = Some(next),
                        None => break,
                    }
                }
                out.truncate(limit);
                Ok(out)
            }
        }
    }

    /// Deletes an ended run (retention).
    pub(crate) async fn delete(&self, id: &RunId) -> Result<(), Error> {
        match self {
            Self::Local(e) => e.delete(id).await,
            Self::Remote(c) => c.delete_run(id).await,
        }
    }

    /// A bounded window of events with `seq > after`.
    pub(crate) async fn list_events(
        &self,
        id: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        match self {
            Self::Local(e) => e.list_events(id, after, limit).await,
            Self::Remote(c) => c.list_events(id, after, limit).await,
        }
    }

    /// Every event of the run (for verification).
    pub(crate) async fn all_events(&self, id: &RunId) -> Result<Vec<Event>, Error> {
        let mut events: Vec<Event> = Vec::new();
        loop {
            let after = events.last().map_or(0, |e| e.seq);
            let batch = self.list_events(id, after, 1000).await?;
            if batch.is_empty() {
                return Ok(events);
            }
            events.extend(batch);
        }
    }

    /// Events from `after` on, following live until `terminal` (SSE with reconnection when
    /// remote).
    pub(crate) fn subscribe(&self, id: &RunId, after: u64) -> Events {
        match self {
            Self::Local(e) => Box::pin(e.subscribe(id, after)),
            Self::Remote(c) => c.events(id, after),
        }
    }

    /// Starts a run whose archive is ready.
    pub(crate) async fn start(&self, id: &RunId) -> Result<RunRecord, Error> {
        match self {
            Self::Local(e) => e.start(id).await,
            Self::Remote(c) => c.start(id).await,
        }
    }

    /// Cancels a run (the kill ladder when it is running).
    pub(crate) async fn cancel(&self, id: &RunId) -> Result<RunRecord, Error> {
        match self {
            Self::Local(e) => e.cancel(id).await,
            Self::Remote(c) => c.cancel(id).await,
        }
    }

    /// The Evidence Bundle of an ended run.
    pub(crate) async fn evidence(&self, id: &RunId) -> Result<EvidenceBundle, Error> {
        match self {
            Self::Local(e) => e.evidence(id).await,
            Self::Remote(c) => c.evidence(id).await,
        }
    }

    /// The in-toto Statement view of the Evidence Bundle.
    pub(crate) async fn evidence_in_toto(&self, id: &RunId) -> Result<serde_json::Value, Error> {
        match self {
            Self::Local(e) => Ok(e.evidence(id).await?.to_in_toto()),
            Self::Remote(c) => c.evidence_in_toto(id).await,
        }
    }

    /// `n` readers of an artifact's bytes: the stored blob, or the body fetched once from
    /// the server (whose `X-Artifact-Sha256` must name the digest the record has). Callers
    /// re-hash what they read either way.
    pub(crate) async fn artifact_readers(
        &self,
        id: &ArtifactId,
        sha256: &Sha256Digest,
        n: usize,
    ) -> Result<Vec<BlobReader>, Error> {
        match self {
            Self::Local(e) => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let (artifact, reader) = e.open_artifact(id).await?;
                    if artifact.sha256 != *sha256 {
                        return Err(Error::Conflict {
                            message: format!(
                                "artifact {id} has sha256 {}, expected {sha256}",
                                artifact.sha256
                            ),
                        });
                    }
                    out.push(reader);
                }
                Ok(out)
            }
            Self::Remote(c) => {
                let (bytes, header) = c.artifact(id).await?;
                if let Some(h) = header
                    && h != sha256.as_str()
                {
                    return Err(Error::Conflict {
                        message: format!(
                            "the server names artifact {id} sha256 {h}, its record says {sha256}"
                        ),
                    });
                }
                Ok((0..n).map(|_| reader_of(bytes.clone())).collect())
            }
        }
    }
}

fn reader_of(bytes: Bytes) -> BlobReader {
    Box::new(std::io::Cursor::new(bytes)) as Box<dyn std::io::Read + Send>
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_must_be_http() {
        assert!(Connection::remote("127.0.0.1:7700", None, None).is_err());
        assert!(matches!(
            Connection::remote("http://127.0.0.1:7700", None, None),
            Ok(Connection::Remote(_))
        ));
    }
}
