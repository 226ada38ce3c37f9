//! [`WorkspaceRunsBuilder`]: registering backends, configuration, the host key, and opening
//! (which runs recovery unless disabled).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{EngineConfig, Inner, WorkspaceRuns, rejected, templates};
use crate::backend::SandboxBackend;
use crate::error::{Error, Result};
use crate::ownership::RunOwner;
use crate::signing::HostKey;
use crate::store::Store;

/// Builds a [`WorkspaceRuns`].
#[derive(Debug)]
pub struct WorkspaceRunsBuilder {
    store: Arc<dyn Store>,
    backends: Vec<Arc<dyn SandboxBackend>>,
    config: EngineConfig,
    recover: bool,
    count_usage: bool,
    host_key: Option<Arc<HostKey>>,
}

impl WorkspaceRunsBuilder {
    /// Registers a backend under its `name()`.
    pub fn backend(mut self, backend: Arc<dyn SandboxBackend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Signs every run's evidence with `key` in its terminal commit (a DSSE envelope of the
    /// bundle's in-toto view, stored with the bundle; see
    /// [`WorkspaceRuns::evidence_envelope`]).
    pub fn host_key(mut self, key: Arc<HostKey>) -> Self {
        self.host_key = Some(key);
        self
    }

    /// Skips recovery on open (for read-only tools that must not touch other runs); on a
    /// shared store, also the periodic reclaim pass (the lease is still held and renewed).
    pub fn without_recovery(mut self) -> Self {
        self.recover = false;
        self
    }

    /// Skips the store's aggregate ([`crate::Store::usage`]: every run counted by status,
    /// every blob summed) that seeds the gauges on open ([`WorkspaceRuns::runs_by_status`],
    /// [`WorkspaceRuns::store_blob_bytes`]): for a short-lived engine nobody reads the
    /// gauges of (one CLI command), where the aggregate grows with the store's history.
    /// The gauges then count from zero (the status changes this engine commits) until the
    /// next [`WorkspaceRuns::refresh_usage`].
    pub fn without_usage_count(mut self) -> Self {
        self.count_usage = false;
        self
    }

    /// Opens the engine and, unless disabled, runs [`WorkspaceRuns::recover`].
    pub async fn open(self) -> Result<WorkspaceRuns> {
        if self.backends.is_empty() {
            return Err(Error::invalid("backends", "register at least one backend"));
        }
        let mut backends = BTreeMap::new();
        for b in &self.backends {
            backends.insert(b.name().to_owned(), b.clone());
        }
        let default_backend = match &self.config.default_backend {
            Some(name) if backends.contains_key(name) => name.clone(),
            Some(name) => {
                return Err(Error::invalid(
                    "defaultBackend",
                    format!("no backend named {name:?}"),
                ));
            }
            None => self.backends[0].name().to_owned(),
        };
        let instance = format!("eng_{}", uuid::Uuid::new_v4().simple());
        let mut config = self.config;
        if self.store.coordination().is_some() {
            config.subscribe_poll_interval = config
                .subscribe_poll_interval
                .min(std::time::Duration::from_millis(100));
        }
        let engine = WorkspaceRuns {
            inner: Arc::new(Inner {
                store: self.store,
                backends,
                default_backend,
                slots: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
                config,
                owner: RunOwner::current(&instance),
                instance,
                live: Mutex::default(),
                secrets: Mutex::default(),
                watchers: Mutex::default(),
                run_locks: Mutex::default(),
                metrics: Arc::default(),
                staging_admission: tokio::sync::Mutex::default(),
                verifying: rejected::Verifying::default(),
                host_key: self.host_key,
                templates: templates::TemplateNames::default(),
                gauges: super::observe::RunGauges::default(),
                prepared: super::prepare::Prepared::default(),
                claim_wake: tokio::sync::Notify::new(),
                claim_probe: tokio::sync::Mutex::new(()),
            }),
        };
        if self.count_usage {
            engine.refresh_usage().await;
        }
        // On a shared store the lease is taken before recovery judges other owners, and
        // kept by a heartbeat from then on (any engine may drive runs, with or without
        // recovery).
        if let Some(coordination) = engine.inner.store.coordination() {
            coordination
                .renew_lease(&engine.inner.instance, engine.inner.config.lease_ttl)
                .await?;
        }
        if self.recover {
            engine.recover().await?;
        }
        if engine.inner.store.coordination().is_some() {
            engine.spawn_coordinator(self.recover);
        }
        Ok(engine)
    }
}

impl WorkspaceRuns {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn Store>) -> WorkspaceRunsBuilder {
        WorkspaceRunsBuilder {
            store,
            backends: Vec::new(),
            config: EngineConfig::default(),
            recover: true,
            count_usage: true,
            host_key: None,
        }
    }
}
