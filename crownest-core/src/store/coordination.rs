//! Coordination of several engines on one shared store (`docs/scale-out.md`): leases
//! instead of process ids, and a shared queue of runs any engine may claim.
//!
//! A store that one host owns (SQLite, memory) has none: each engine drives the runs it
//! starts, and an owner is a process of this host ([`crate::ownership::HostProcesses`]).
//! A shared store (PostgreSQL) returns one from [`Store::coordination`](super::Store::coordination);
//! then:
//!
//! * **Leases.** Every engine holds a lease, renewed by a heartbeat (every third of
//!   `EngineConfig::lease_ttl`), with an expiry on the *store's* clock (so hosts' clocks
//!   need not agree). An owner whose lease expired is [`Liveness::Gone`]: any engine's next
//!   reclaim pass fails its unfinished runs `host_restarted`, with evidence, once (the
//!   terminal commit is guarded by the run's expected next sequence number, so a second
//!   reclaimer, or the old owner coming back, loses with `Conflict`).
//! * **The queue.** A run started on an engine without a free slot is committed `queued`
//!   with no owner; any engine with a free slot and the run's backend claims it with
//!   [`Coordination::claim_queued`], which hands each run to exactly one caller.
//!
//! Semantics: a run is executed **at most once** (a run whose owner is lost is failed,
//! never retried) and finalized **exactly once**.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::ownership::{Liveness, RunOwner};
use crate::run::RunRecord;

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// The lease was held (or taken for the first time) and is renewed.
    Held,
    /// The lease had expired before this renewal: other engines may have failed this
    /// engine's runs meanwhile. It is held again from now on.
    Lapsed,
}

/// Leases and the shared queue of a store shared by several engines (see the module docs).
#[async_trait]
pub trait Coordination: Send + Sync + Debug {
    /// Takes or renews `instance`'s lease until `ttl` from now, by the store's clock.
    async fn renew_lease(&self, instance: &str, ttl: Duration) -> Result<LeaseRenewal>;

    /// Ends `instance`'s lease at once (a clean shutdown with no run left to drive).
    async fn release_lease(&self, instance: &str) -> Result<()>;

    /// Whether each of `instances` holds an unexpired lease: [`Liveness::Alive`] while it
    /// does, [`Liveness::Gone`] once it expired or when there is none. Every instance asked
    /// for is in the answer.
    async fn lease_liveness(&self, instances: &[String]) -> Result<HashMap<String, Liveness>>;

    /// Claims up to `limit` runs that are `queued` with no owner, on one of `backends`,
    /// oldest first, for `owner`. Each run is handed to exactly one caller, however many
    /// engines claim at once; the records returned carry `owner`. Their status is still
    /// `queued`: the caller commits the next step (or loses with `Conflict` to a cancel).
    async fn claim_queued(
        &self,
        owner: &RunOwner,
        backends: &[String],
        limit: usize,
    ) -> Result<Vec<RunRecord>>;

    /// A counter that moves when the store may hold a newly claimable run (the store's
    /// notifications, e.g. PostgreSQL `LISTEN/NOTIFY`). `None`: the engine polls only.
    fn queue_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
