//! The warm pool: sandbox containers created and started ahead of their runs, per template.
//!
//! * **Shape.** A pool member is made by the same call as a fresh sandbox
//!   (`container::create_started`): the same image id, user, capabilities, read-only root,
//!   `no-new-privileges`, network `none`, tmpfs, limits ([`DockerConfig::pool_limits`]) and
//!   workspace (a bound directory of its own, or an anonymous volume); its launcher waits
//!   for a command. Its labels name it
//!   (`crownest.sandbox`), its owner (this process: pid, start time, and the pool's own
//!   instance id) and its template (`crownest.pool`), but no run: it was created before its
//!   run existed. So the one orphan rule applies unchanged: once the owner process is gone,
//!   any engine's sweep removes it; while it lives, no other engine touches it.
//! * **Fit.** A run takes a member only when the member is exactly what a fresh sandbox
//!   would be ([`fits`]): its template, network `none`, the same memory, pids and open-files
//!   limits; and the member's image is still the template's image (a rebuilt image retires
//!   the old members). Anything else gets a fresh container (a miss).
//! * **Once.** A member is taken out of the queue under the lock by exactly one `create`,
//!   used for that run only and destroyed after it like any sandbox; it never goes back.
//! * **Refill.** The template is topped up in the background to its size (ready + being
//!   created): at once after a miss or a claim that took the last ready member; after a
//!   claim that left ready members, only when the claimed member is released (destroyed).
//!   So the replacement's create and start (the heaviest Docker work, ~300 ms of runc and
//!   the daemon) do not compete for the daemon and the CPUs with the run that just took a
//!   member, while another run still finds one ready. A failed creation is recorded
//!   (`last_error`) and retried at the next claim or release, never in a loop.
//! * **Head start** ([`DockerConfig::with_head_start`]). The pool is filled once, as the
//!   backend connects, and never refilled; a claim that fits while the member is still
//!   being created waits for it (a failed creation is a miss).
//! * **Drain.** [`Pool::drain`] (the backend's `shutdown`) stops refills and removes every
//!   ready member, and those still being created once they are; a crash leaves them to the
//!   sweep.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crownest_core::backend::PoolStatus;
use crownest_core::run::RunOwner;
use crownest_core::{Limits, Network, SandboxSpec};

use crate::backend::Shared;
use crate::config::DockerConfig;
use crate::container::{self, LABEL_POOL};

/// A started container of the pool, waiting for a run.
#[derive(Debug)]
pub(crate) struct Warm {
    /// Its sandbox id (container name).
    pub(crate) sandbox: String,
    /// The container id.
    pub(crate) container: String,
    /// The image it was created from.
    pub(crate) image_id: String,
    /// Its launcher, attached before the start with the workspace offered (in a mutex
    /// only to make `Warm` shareable: only its owner takes it).
    pub(crate) offered: std::sync::Mutex<Option<container::Offered>>,
    /// Its start, still in flight for a head start that places the workspace from the
    /// host (`container::create_starting`).
    pub(crate) starting: Option<container::Starting>,
    /// Attached before the start without an offer (in a mutex only to make `Warm`
    /// shareable).
    pub(crate) attached: std::sync::Mutex<Option<bollard::container::AttachContainerResults>>,
    /// The work-root directory bound at its `/workspace` (`place.rs`); `None`: a volume.
    pub(crate) bound: Option<Arc<crownest_core::hostdir::SandboxDir>>,
}

#[derive(Debug, Default)]
struct Slot {
    ready: VecDeque<Warm>,
    creating: u64,
    in_use: u64,
    hits: u64,
    misses: u64,
    last_error: Option<String>,
}

/// The pool of one backend (empty when no template has a size).
#[derive(Debug)]
pub(crate) struct Pool {
    sizes: BTreeMap<String, usize>,
    limits: Limits,
    /// The owner recorded on members: this process, with the pool's own instance id.
    owner: RunOwner,
    slots: Mutex<BTreeMap<String, Slot>>,
    closed: AtomicBool,
    /// Filled once, never refilled; claims wait for a member being created.
    head_start: bool,
    /// Wakes `drain`, and claims of a head start, when a creation in flight ends.
    settled: tokio::sync::Notify,
}

/// Whether a run of `spec` may take a member of `template`'s pool made with `limits`: the
/// member must be exactly the container a fresh `create` would make.
pub(crate) fn fits(spec: &SandboxSpec, template: &str, limits: &Limits) -> bool {
    spec.template == template
        && spec.network == Network::None
        && spec.limits.memory_bytes == limits.memory_bytes
        && spec.limits.pids == limits.pids
        && spec.limits.open_files == limits.open_files
}

/// What a claim found.
pub(crate) enum Claim {
    /// A member, now this run's.
    Hit(Box<Warm>),
    /// None fits or none is ready (counted when the template has a pool).
    Miss,
}

/// What one look at the pool found.
enum Attempt {
    Done(Claim),
    /// A head start that fits is still being created.
    Wait,
}

impl Pool {
    pub(crate) fn new(config: &DockerConfig) -> Self {
        let sizes: BTreeMap<String, usize> = config
            .pool
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        let slots = sizes.keys().map(|t| (t.clone(), Slot::default())).collect();
        Self {
            sizes,
            limits: config.pool_limits,
            owner: RunOwner::current(&format!("pool_{}", uuid::Uuid::new_v4().simple())),
            slots: Mutex::new(slots),
            closed: AtomicBool::new(false),
            head_start: config.head_start,
            settled: tokio::sync::Notify::new(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when some template has a pool.
    pub(crate) fn is_configured(&self) -> bool {
        !self.sizes.is_empty()
    }

    /// Takes a member for a run of `spec` whose template image is now `image_id`, if one
    /// fits; members of another image are retired. Either way the template is topped up
    /// (unless the pool is a head start, whose member being created is waited for).
    pub(crate) async fn claim(
        &self,
        shared: &Arc<Shared>,
        spec: &SandboxSpec,
        image_id: &str,
    ) -> Claim {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.attempt(shared, spec, image_id) {
                Attempt::Done(claim) => return claim,
                Attempt::Wait => settled.await,
            }
        }
    }

    fn attempt(&self, shared: &Arc<Shared>, spec: &SandboxSpec, image_id: &str) -> Attempt {
        if !self.sizes.contains_key(&spec.template) || self.closed.load(Ordering::SeqCst) {
            return Attempt::Done(Claim::Miss);
        }
        let mut stale = Vec::new();
        let mut defer = false;
        let claim = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&spec.template) else {
                return Attempt::Done(Claim::Miss);
            };
            let mut found = None;
            let fit = fits(spec, &spec.template, &self.limits);
            if fit {
                while let Some(warm) = slot.ready.pop_front() {
                    if warm.image_id == image_id {
                        found = Some(warm);
                        break;
                    }
                    stale.push(warm);
                }
            }
            match found {
                Some(warm) => {
                    slot.hits += 1;
                    slot.in_use += 1;
                    // Ready members left: the refill waits for this member's release.
                    defer = !slot.ready.is_empty();
                    Attempt::Done(Claim::Hit(Box::new(warm)))
                }
                None if fit && self.head_start && slot.creating > 0 && stale.is_empty() => {
                    return Attempt::Wait;
                }
                None => {
                    slot.misses += 1;
                    Attempt::Done(Claim::Miss)
                }
            }
        };
        for warm in stale {
            retire(shared, warm);
        }
        if !defer && !self.head_start {
            self.refill(shared, &spec.template);
        }
        claim
    }

    /// A claimed member was destroyed (or its removal started): the template is topped up.
    pub(crate) fn released(&self, shared: &Arc<Shared>, template: &str) {
        if let Some(slot) = self.slots().get_mut(template) {
            slot.in_use = slot.in_use.saturating_sub(1);
        }
        if !self.head_start {
            self.refill(shared, template);
        }
    }

    /// Tops every template up (at start-up).
    pub(crate) fn fill(&self, shared: &Arc<Shared>) {
        for template in self.sizes.keys() {
            self.refill(shared, template);
        }
    }

    /// Starts the creations that bring `template` to its size (ready + being created).
    fn refill(&self, shared: &Arc<Shared>, template: &str) {
        let Some(size) = self.sizes.get(template).copied() else {
            return;
        };
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let need = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(template) else {
                return;
            };
            let have = slot.ready.len() as u64 + slot.creating;
            let need = (size as u64).saturating_sub(have);
            slot.creating += need;
            need
        };
        for _ in 0..need {
            let shared = shared.clone();
            let template = template.to_owned();
            tokio::spawn(async move {
                let made = create_member(&shared, &template).await;
                let pool = &shared.pool;
                let late = {
                    let mut slots = pool.slots();
                    let slot = slots.entry(template.clone()).or_default();
                    match made {
                        // Drained meanwhile: it never joins the pool, and stays counted as
                        // being created until it is removed (a drain waits for that).
                        Ok(warm) if pool.closed.load(Ordering::SeqCst) => Some(warm),
                        Ok(warm) => {
                            slot.creating = slot.creating.saturating_sub(1);
                            slot.ready.push_back(warm);
                            slot.last_error = None;
                            None
                        }
                        Err(e) => {
                            slot.creating = slot.creating.saturating_sub(1);
                            if pool.head_start {
                                // The run falls back to a fresh sandbox, whose own failure
                                // (if any) is the one reported.
                                tracing::debug!(template, error = %e, "creating the head start sandbox failed");
                            } else {
                                tracing::warn!(template, error = %e, "creating a warm pool sandbox failed");
                            }
                            slot.last_error = Some(e);
                            None
                        }
                    }
                };
                if let Some(warm) = late {
                    remove(&shared, &warm).await;
                    if let Some(slot) = pool.slots().get_mut(&template) {
                        slot.creating = slot.creating.saturating_sub(1);
                    }
                }
                pool.settled.notify_waiters();
            });
        }
    }

    /// What each template's pool holds now.
    pub(crate) fn status(&self) -> Vec<PoolStatus> {
        self.slots()
            .iter()
            .map(|(template, slot)| PoolStatus {
                template: template.clone(),
                size: self.sizes.get(template).copied().unwrap_or_default() as u64,
                ready: slot.ready.len() as u64,
                creating: slot.creating,
                in_use: slot.in_use,
                hits: slot.hits,
                misses: slot.misses,
                idle_memory_limit_bytes: slot.ready.len() as u64 * self.limits.memory_bytes,
                last_error: slot.last_error.clone(),
            })
            .collect()
    }

    /// Stops refills, removes every ready member and waits for the creations in flight
    /// (each removes its member once made). Idempotent.
    pub(crate) async fn drain(&self, shared: &Arc<Shared>) {
        self.closed.store(true, Ordering::SeqCst);
        let ready: Vec<Warm> = self
            .slots()
            .values_mut()
            .flat_map(|s| s.ready.drain(..))
            .collect();
        futures::future::join_all(ready.iter().map(|w| remove(shared, w))).await;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.slots().values().all(|s| s.creating == 0) {
                return;
            }
            settled.await;
        }
    }
}

/// The warm pool sandboxes on this Docker host of one owner and template, whichever process
/// keeps them (what `crownest doctor` shows; see [`crate::DockerBackend::pools_on_host`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPool {
    /// The template.
    pub template: String,
    /// The owner process.
    pub owner_pid: u32,
    /// Whether it is still running (else the next sweep removes them).
    pub owner_alive: bool,
    /// Its pool sandboxes (ready, or taken by a run and not destroyed yet).
    pub sandboxes: u64,
    /// Their memory limits, summed.
    pub memory_limit_bytes: u64,
}

/// Lists the pool sandboxes on the host, grouped by owner and template.
pub(crate) async fn on_host(
    docker: &bollard::Docker,
) -> Result<Vec<HostPool>, crate::error::DockerError> {
    let mut groups: BTreeMap<(String, u32), HostPool> = BTreeMap::new();
    for c in crate::cleanup::containers_with_label(docker, LABEL_POOL).await? {
        let labels = c.labels.unwrap_or_default();
        let (Some(template), Some(owner)) = (labels.get(LABEL_POOL), container::owner_of(&labels))
        else {
            continue;
        };
        let memory = match &c.id {
            Some(id) => docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|i| i.host_config)
                .and_then(|h| h.memory)
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or_default(),
            None => 0,
        };
        let entry = groups
            .entry((template.clone(), owner.pid))
            .or_insert_with(|| HostPool {
                template: template.clone(),
                owner_pid: owner.pid,
                owner_alive: owner.is_alive(),
                sandboxes: 0,
                memory_limit_bytes: 0,
            });
        entry.sandboxes += 1;
        entry.memory_limit_bytes += memory;
    }
    Ok(groups.into_values().collect())
}

/// Creates and starts one member of `template`'s pool.
async fn create_member(shared: &Arc<Shared>, template: &str) -> Result<Warm, String> {
    let reference = shared
        .config
        .templates
        .get(template)
        .ok_or_else(|| format!("no template {template:?} in the configuration"))?;
    let image = shared
        .image(reference)
        .await
        .map_err(|e| crownest_core::Error::from(e).chain())?;
    let sandbox = container::new_sandbox_id();
    let mut labels = container::owner_labels(&sandbox, &shared.pool.owner);
    labels.insert(LABEL_POOL.to_owned(), template.to_owned());
    let shape = container::Shape {
        sandbox: &sandbox,
        labels,
        image_id: &image.id,
        limits: &shared.pool.limits,
        network: Network::None,
        bound: None,
    };
    // No run yet: the bound directory's marker names a run id of its own, which is never
    // live (so the one orphan rule applies as to the container's labels).
    let owner = &shared.pool.owner;
    let marker = crownest_core::hostdir::Marker::new(
        crate::BACKEND,
        &crownest_core::RunId::new(),
        &owner.instance,
        owner.clone(),
    );
    // A head start with a bound workspace is handed out as soon as it exists: the run's
    // workspace is moved in while it starts. A pool member is ready only once started (a
    // failed start is then the pool's, not a run's).
    let (created, bound) = container::create_sandbox(shared, shape, marker, shared.pool.head_start)
        .await
        .map_err(|e| crownest_core::Error::from(e).chain())?;
    Ok(Warm {
        sandbox,
        container: created.id,
        image_id: image.id,
        offered: std::sync::Mutex::new(created.offered),
        starting: created.starting,
        attached: std::sync::Mutex::new(created.attached),
        bound,
    })
}

/// Removes a member that will not be used (drained, or of a retired image).
async fn remove(shared: &Shared, warm: &Warm) {
    if let Err(e) = crate::cleanup::remove_sandbox(
        &shared.docker,
        &warm.sandbox,
        std::slice::from_ref(&warm.container),
    )
    .await
    {
        tracing::warn!(sandbox = %warm.sandbox, error = %e, "removing a warm pool sandbox failed; a sweep retries once this process is gone");
        return;
    }
    if let Some(bound) = &warm.bound {
        // Waited for: a drain ends with nothing of its members left.
        container::remove_bound(bound, std::time::Duration::from_secs(10)).await;
    }
}

/// Removes a member of a retired image in the background.
fn retire(shared: &Arc<Shared>, warm: Warm) {
    let shared = shared.clone();
    tokio::spawn(async move { remove(&shared, &warm).await });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: &str, network: Network, limits: Limits) -> SandboxSpec {
        SandboxSpec {
            run_id: crownest_core::RunId::new(),
            instance: "i".into(),
            owner: RunOwner::current("i"),
            template: template.into(),
            limits,
            network,
        }
    }

    #[test]
    fn only_the_exact_shape_fits() {
        let pool = Limits::default();
        assert!(fits(
            &spec("python-node", Network::None, pool),
            "python-node",
            &pool
        ));
        assert!(!fits(
            &spec("other", Network::None, pool),
            "python-node",
            &pool
        ));
        assert!(!fits(
            &spec("python-node", Network::Enabled, pool),
            "python-node",
            &pool
        ));
        for change in [
            |l: &mut Limits| l.memory_bytes += 1,
            |l: &mut Limits| l.pids += 1,
            |l: &mut Limits| l.open_files += 1,
        ] {
            let mut other = pool;
            change(&mut other);
            assert!(!fits(
                &spec("python-node", Network::None, other),
                "python-node",
                &pool
            ));
        }
        // Limits that do not shape the container (the deadline, output caps) do not matter.
        let mut other = pool;
        other.timeout_ms += 1;
        other.output_bytes_per_stream += 1;
        assert!(fits(
            &spec("python-node", Network::None, other),
            "python-node",
            &pool
        ));
    }
}
