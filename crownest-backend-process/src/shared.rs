//! [`Shared`]: what a process backend and its sandboxes share (the configuration, the work
//! root, the containment probe in force and its one re-probe after a spawn failure, the
//! resolved template).

use std::sync::{Arc, Mutex};

use crownest_core::hostdir::WorkRoot;
use tokio::sync::OnceCell;

use crate::config::ProcessConfig;
use crate::containment::{self, Probe};
use crate::netns::SpareNetns;
use crate::probe_cache::{self, MemCache};
use crate::template::Resolved;

/// State shared by a backend and its sandboxes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProcessConfig,
    /// The private work root, opened once.
    pub(crate) root: WorkRoot,
    pub(crate) probe: Mutex<ProbeState>,
    /// Held while re-probing after a spawn failure (one re-probe at a time).
    pub(crate) reprobe: tokio::sync::Mutex<()>,
    /// Every template, resolved once (name → what it resolved to).
    pub(crate) templates: OnceCell<std::collections::BTreeMap<String, Resolved>>,
    /// A network namespace made ahead for the next command without network (`netns.rs`).
    pub(crate) netns: Arc<SpareNetns>,
}

#[derive(Debug)]
pub(crate) struct ProbeState {
    pub(crate) current: Arc<Probe>,
    /// `current` came from a cache (memory or disk), not from a probe by this backend.
    pub(crate) cached: bool,
    /// A spawn failure already made this backend re-probe (it does so at most once).
    pub(crate) reprobed: bool,
}

impl Shared {
    pub(crate) fn probe(&self) -> Arc<Probe> {
        self.probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// After a spawn failed with the containment of `used`: when that came from the cache
    /// and was not re-probed yet, probes again (once per backend), stores the result in
    /// the caches and returns it with a note for the isolation report; when another
    /// sandbox already re-probed, returns the newer result. `None`: nothing to retry.
    pub(crate) async fn reprobe_after(
        &self,
        used: &Arc<Probe>,
        failure: &str,
    ) -> Option<(Arc<Probe>, String)> {
        let _one = self.reprobe.lock().await;
        {
            let st = self.probe.lock().unwrap_or_else(|p| p.into_inner());
            if !Arc::ptr_eq(&st.current, used) {
                let note = format!(
                    "the cached containment probe ({}) failed at spawn ({failure}); re-probed: {}",
                    used.applied.name(),
                    st.current.applied.name()
                );
                return Some((st.current.clone(), note));
            }
            if !st.cached || st.reprobed {
                return None;
            }
        }
        let config = self.config.clone();
        let fresh = tokio::task::spawn_blocking(move || containment::probe(&config)).await;
        let mut st = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        st.reprobed = true;
        let fresh = match fresh {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "process backend: re-probing the containment after a spawn failure failed");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "process backend: the containment re-probe task failed");
                return None;
            }
        };
        let note = format!(
            "the cached containment probe ({}) failed at spawn ({failure}); re-probed: {}",
            used.applied.name(),
            fresh.applied.name()
        );
        tracing::warn!(%note, "process backend: containment re-probed");
        let key = probe_cache::Key::current(&self.config);
        probe_cache::store(MemCache::global(), &self.config.root, &key, &fresh);
        st.current = fresh.clone();
        st.cached = false;
        Some((fresh, note))
    }
}
