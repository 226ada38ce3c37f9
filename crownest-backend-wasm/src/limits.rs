//! Resource limits of one guest: wasmtime's [`StoreLimits`] plus a record of the limit
//! that was hit, so a memory-limit trap is reported as `LimitExceeded`, not as a crash.

use std::sync::{Arc, Mutex};

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::WasmConfig;

/// Which limit ended the guest, with details (shared with `exec`).
pub(crate) type LimitHit = Arc<Mutex<Option<String>>>;

/// [`StoreLimits`] (memory from `limits.memoryBytes`, tables, instances, memories) with
/// `trap_on_grow_failure(true)`: a guest that grows past its limit traps at once instead
/// of seeing `memory.grow` fail (CPython would turn that into a `MemoryError` it may
/// catch). The trap is recorded in [`LimitHit`].
pub(crate) struct GuestLimiter {
    inner: StoreLimits,
    memory_bytes: u64,
    hit: LimitHit,
}

impl GuestLimiter {
    pub(crate) fn new(memory_bytes: u64, config: &WasmConfig, hit: LimitHit) -> Self {
        let inner = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
            .table_elements(config.max_table_elements)
            .instances(config.max_instances)
            .tables(config.max_tables)
            .memories(config.max_memories)
            .trap_on_grow_failure(true)
            .build();
        Self {
            inner,
            memory_bytes,
            hit,
        }
    }

    fn record(&self, what: String) {
        let mut hit = self.hit.lock().unwrap_or_else(|p| p.into_inner());
        hit.get_or_insert(what);
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.record(format!(
                "memory limit of {} bytes: the guest asked to grow its linear memory from {current} to {desired} bytes",
                self.memory_bytes
            ));
        }
        r
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.record(format!(
            "the host could not grow the guest's memory: {error}"
        ));
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.table_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.record(format!(
                "table limit: the guest asked to grow a table from {current} to {desired} elements"
            ));
        }
        r
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.record(format!("the host could not grow a table: {error}"));
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
