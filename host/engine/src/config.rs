//! Sandbox limits and engine settings.

use std::path::PathBuf;
use std::time::Duration;

/// How the engine compiles, caches and confines policies. The defaults suit production.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest component accepted, in bytes.
    pub max_module_bytes: usize,
    /// Linear memory cap of each instance, in bytes.
    pub max_memory_bytes: usize,
    /// Wasm stack available to a call, in bytes; deeper recursion traps.
    pub max_stack_bytes: usize,
    /// Work budget of one call, in wasmtime fuel (about one unit per wasm instruction). It bounds
    /// what a guest may compute whatever the machine's load: a call whose thread waits for a
    /// core spends none of it.
    pub call_fuel: u64,
    /// Wall-clock budget of one call (enforced by epoch interruption): the backstop for a call
    /// that stalls without computing, so generous that only such a call meets it.
    pub call_timeout: Duration,
    /// How often the epoch advances: the granularity of `call_timeout`.
    pub epoch_tick: Duration,
    /// Idle warm instances kept per policy; more are created under load and dropped after.
    pub max_idle_instances: usize,
    /// Where precompiled artifacts are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: 4 * 1024 * 1024,
            max_memory_bytes: 16 * 1024 * 1024,
            max_stack_bytes: 256 * 1024,
            // A strategy's decision burns a few thousand units; this is thousands of times that,
            // a few milliseconds of work.
            call_fuel: 20_000_000,
            call_timeout: Duration::from_secs(1),
            epoch_tick: Duration::from_millis(5),
            max_idle_instances: 64,
            cache_dir: None,
        }
    }
}

impl EngineConfig {
    /// The epoch deadline of one call, in ticks (at least two, so a call that starts just
    /// before a tick still gets one whole tick).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = self.epoch_tick.as_micros().max(1);
        let ticks = self.call_timeout.as_micros().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1) + 1
    }
}
