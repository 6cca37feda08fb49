//! The per-instance sandbox: a store with a memory cap, and the mapping of wasmtime's failures
//! to [`GuestError`].

use wasmtime::{ResourceLimiter, Store, Trap};

use crate::config::EngineConfig;
use crate::error::GuestError;

/// Host state of one instance's store. Guests import nothing, so this holds only limits.
pub(crate) struct Sandbox {
    memory: MemoryCap,
}

/// Refuses memory growth past the cap, and remembers that it did so that the resulting trap
/// can be reported as what it is.
struct MemoryCap {
    max_bytes: usize,
    exceeded: bool,
}

/// Most table elements an instance may have (guests need a handful).
const MAX_TABLE_ELEMENTS: usize = 10_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Sandbox {
    /// A store for one instance, with its memory cap installed.
    pub(crate) fn store(engine: &wasmtime::Engine, config: &EngineConfig) -> Store<Sandbox> {
        let sandbox = Sandbox { memory: MemoryCap { max_bytes: config.max_memory_bytes, exceeded: false } };
        let mut store = Store::new(engine, sandbox);
        store.limiter(|s| &mut s.memory);
        store
    }
}

/// Classifies a failed call. A memory cap hit wins: the guest usually traps right after the
/// refused growth, and the trap itself would hide why.
pub(crate) fn classify(err: &wasmtime::Error, store: &Store<Sandbox>, config: &EngineConfig) -> GuestError {
    if store.data().memory.exceeded {
        return GuestError::MemoryLimit { limit: config.max_memory_bytes };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestError::OutOfFuel { fuel: config.call_fuel },
        Some(Trap::Interrupt) => GuestError::Timeout(config.call_timeout),
        Some(Trap::StackOverflow) => GuestError::StackOverflow,
        Some(trap) => GuestError::Trap(trap.to_string()),
        None => GuestError::Trap(format!("{err:#}")),
    }
}
