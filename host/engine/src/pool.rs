//! Warm instances, reused across calls so that a decision never pays for instantiation.
//!
//! Each instance lives in its own store (its own memory and limits). A call takes an idle
//! instance, or makes one when none is idle; a call that fails in any way discards its instance,
//! so a trap or a runaway guest never leaves a corrupt instance behind.

use std::sync::Mutex;

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use crate::config::EngineConfig;
use crate::error::GuestError;
use crate::sandbox::{Sandbox, classify};

/// Turns a fresh instance into the typed handle of the interface being called.
pub(crate) type Loader<G> = Box<dyn Fn(&mut Store<Sandbox>, &Instance) -> wasmtime::Result<G> + Send + Sync>;

/// An instance and the typed exports of the interface it is used for.
struct Warm<G> {
    store: Store<Sandbox>,
    guest: G,
}

/// The instances of one loaded component.
pub(crate) struct InstancePool<G> {
    pre: InstancePre<Sandbox>,
    load: Loader<G>,
    config: EngineConfig,
    idle: Mutex<Vec<Warm<G>>>,
}

impl<G> InstancePool<G> {
    pub(crate) fn new(pre: InstancePre<Sandbox>, load: Loader<G>, config: EngineConfig) -> Self {
        Self { pre, load, config, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `call` on a warm instance under the call deadline. On success the instance goes back
    /// to the pool; on any failure it is dropped and the failure classified.
    pub(crate) fn call<R>(
        &self,
        call: impl FnOnce(&mut Store<Sandbox>, &G) -> wasmtime::Result<R>,
    ) -> Result<R, GuestError> {
        let mut warm = match self.take_idle() {
            Some(warm) => warm,
            None => self.instantiate()?,
        };
        if let Err(err) = arm(&mut warm.store, &self.config) {
            return Err(classify(&err, &warm.store, &self.config));
        }
        match call(&mut warm.store, &warm.guest) {
            Ok(value) => {
                self.put_back(warm);
                Ok(value)
            }
            Err(err) => {
                let error = classify(&err, &warm.store, &self.config);
                tracing::warn!(error = %error, "policy call failed; instance discarded");
                Err(error)
            }
        }
    }

    /// Number of idle instances (for tests and metrics).
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn take_idle(&self) -> Option<Warm<G>> {
        self.idle.lock().ok()?.pop()
    }

    fn put_back(&self, warm: Warm<G>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.config.max_idle_instances
        {
            idle.push(warm);
        }
    }

    fn instantiate(&self) -> Result<Warm<G>, GuestError> {
        let mut store = Sandbox::store(self.pre.engine(), &self.config);
        arm(&mut store, &self.config).map_err(|err| GuestError::Instantiate(format!("{err:#}")))?;
        let instance = self.pre.instantiate(&mut store).map_err(|err| match classify(&err, &store, &self.config) {
            GuestError::Trap(reason) => GuestError::Instantiate(reason),
            other => other,
        })?;
        let guest = (self.load)(&mut store, &instance).map_err(|err| GuestError::Instantiate(format!("{err:#}")))?;
        Ok(Warm { store, guest })
    }
}

/// Gives `store` a whole call's budgets: its fuel and its epoch deadline.
fn arm(store: &mut Store<Sandbox>, config: &EngineConfig) -> wasmtime::Result<()> {
    store.set_fuel(config.call_fuel)?;
    store.set_epoch_deadline(config.deadline_ticks());
    Ok(())
}
