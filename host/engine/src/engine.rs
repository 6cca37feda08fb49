//! The engine: one wasmtime engine for every policy, its epoch ticker and its artifact cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{QUOTA_INTERFACE, RATE_LIMITER_INTERFACE, quota_api, rate_api};
use crate::cache::ArtifactCache;
use crate::config::EngineConfig;
use crate::error::LoadError;
use crate::inspect::{self, ComponentInfo, Interfaces, PolicyKind};
use crate::pool::InstancePool;
use crate::quota_rule::QuotaRule;
use crate::rate_limiter::RateLimiter;
use crate::sandbox::Sandbox;

/// Compiles, caches and runs policy components. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: EngineConfig,
    cache: Option<ArtifactCache>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A loaded policy of either kind.
#[derive(Clone)]
pub enum Policy {
    /// A rate limiter.
    RateLimiter(RateLimiter),
    /// A quota rule.
    QuotaRule(QuotaRule),
}

impl Policy {
    /// Facts about the component.
    pub fn info(&self) -> &ComponentInfo {
        match self {
            Self::RateLimiter(p) => p.info(),
            Self::QuotaRule(p) => p.info(),
        }
    }
}

impl PolicyEngine {
    /// Starts an engine: wasmtime configured for sandboxed synchronous calls metered in fuel, and
    /// a thread that advances the epoch every `epoch_tick` for as long as the engine lives.
    pub fn new(config: EngineConfig) -> Result<Self, LoadError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_stack_bytes)
            // Synchronous calls only; with this on (the default since wasmtime 43) every call
            // pays for async bookkeeping it never uses.
            .concurrency_support(false);
        let engine = Engine::new(&wasm).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cache =
            match &config.cache_dir {
                Some(dir) => Some(ArtifactCache::new(dir, &engine).map_err(|e| {
                    LoadError::Engine(format!("cannot use the compile cache at {}: {e}", dir.display()))
                })?),
                None => None,
            };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), config.epoch_tick, Arc::clone(&stop_ticker))?;
        Ok(Self { inner: Arc::new(Inner { engine, config, cache, stop_ticker }) })
    }

    /// The settings this engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Compiles (or loads from the cache) and validates a component. CPU-heavy on a cache miss:
    /// call it off the async runtime's worker threads.
    pub fn load(&self, bytes: &[u8]) -> Result<Policy, LoadError> {
        let (component, info) = self.compile(bytes)?;
        let mut linker: Linker<Sandbox> = Linker::new(&self.inner.engine);
        for name in &info.imports {
            // Only type-only interfaces get this far; an empty instance satisfies them.
            linker.instance(name).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        }
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let config = self.inner.config.clone();
        let shape = |interface, e: wasmtime::Error| LoadError::WrongShape { interface, reason: format!("{e:#}") };
        Ok(match info.kind {
            PolicyKind::RateLimiter => {
                let indices = rate_api::GuestIndices::new(&pre).map_err(|e| shape(RATE_LIMITER_INTERFACE, e))?;
                let load = Box::new(move |store: &mut _, instance: &_| indices.load(store, instance));
                Policy::RateLimiter(RateLimiter::new(info, InstancePool::new(pre, load, config))?)
            }
            PolicyKind::QuotaRule => {
                let indices = quota_api::GuestIndices::new(&pre).map_err(|e| shape(QUOTA_INTERFACE, e))?;
                let load = Box::new(move |store: &mut _, instance: &_| indices.load(store, instance));
                Policy::QuotaRule(QuotaRule::new(info, InstancePool::new(pre, load, config)))
            }
        })
    }

    /// Loads a component that must be a rate limiter.
    pub fn load_rate_limiter(&self, bytes: &[u8]) -> Result<RateLimiter, LoadError> {
        match self.load(bytes)? {
            Policy::RateLimiter(limiter) => Ok(limiter),
            Policy::QuotaRule(_) => Err(wrong_world(PolicyKind::RateLimiter, PolicyKind::QuotaRule)),
        }
    }

    /// Loads a component that must be a quota rule.
    pub fn load_quota_rule(&self, bytes: &[u8]) -> Result<QuotaRule, LoadError> {
        match self.load(bytes)? {
            Policy::QuotaRule(rule) => Ok(rule),
            Policy::RateLimiter(_) => Err(wrong_world(PolicyKind::QuotaRule, PolicyKind::RateLimiter)),
        }
    }

    fn compile(&self, bytes: &[u8]) -> Result<(Component, ComponentInfo), LoadError> {
        let limit = self.inner.config.max_module_bytes;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge { size: bytes.len(), limit });
        }
        inspect::refuse_core_module(bytes)?;
        let sha256 = inspect::sha256_hex(bytes);
        let started = Instant::now();
        let cached = self.inner.cache.as_ref().and_then(|c| c.get(&self.inner.engine, &sha256));
        let was_cached = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => Component::new(&self.inner.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        };
        let compile_time = started.elapsed();
        let interfaces = Interfaces::of(&self.inner.engine, &component);
        let kind = inspect::classify(&interfaces)?;
        let (imports, exports) = (interfaces.all_imports(), interfaces.exports);
        if !was_cached && let Some(cache) = &self.inner.cache {
            cache.put(&sha256, &component);
        }
        tracing::debug!(%sha256, kind = kind.as_str(), ?compile_time, cached = was_cached, "component loaded");
        let info =
            ComponentInfo { kind, sha256, size: bytes.len(), imports, exports, compile_time, cached: was_cached };
        Ok((component, info))
    }
}

fn wrong_world(wanted: PolicyKind, found: PolicyKind) -> LoadError {
    LoadError::UnknownWorld { expected: wanted.world().into(), found: found.world().into() }
}

/// Advances the engine's epoch every `tick` until `stop` is set.
fn spawn_ticker(engine: Engine, tick: std::time::Duration, stop: Arc<AtomicBool>) -> Result<(), LoadError> {
    std::thread::Builder::new()
        .name("leaky-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))
}
