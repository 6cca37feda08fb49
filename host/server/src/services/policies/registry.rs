//! The policy registry: the set in force, and every change to it.
//!
//! The database holds the truth (versions, activations, bindings and a generation counter);
//! each process holds the [`PolicySet`] built from it. A change is validated by building the
//! set it would produce *before* anything is stored, so an invalid change changes nothing. Then
//! it is stored (bumping the generation) and the new set is swapped in whole: a request holds
//! the set it started with to its end, the next request gets the new one. Other replicas see
//! the generation move and rebuild ([`crate::services::policies::sync`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use leaky_engine::{Policy, PolicyEngine, Request, Usage};
use leaky_store::policies::{self, Binding, NewVersion, PolicyState, VersionInfo};
use leaky_store::{Database, StoreError};

use crate::services::accounts::lock;
use crate::services::policies::bound::Params;
use crate::services::policies::set::{Inputs, PolicySet};

/// Why a policy change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The component is not a valid policy (400 `invalid_module`).
    #[error("{0}")]
    InvalidModule(String),
    /// The change would leave a binding that cannot be built (400).
    #[error("{0}")]
    InvalidBinding(String),
    /// No such module or version (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One module and its versions, for listings.
pub struct ModuleListing {
    /// The module's name.
    pub name: String,
    /// `rate-limiter` or `quota-rule`.
    pub kind: String,
    /// The active version, if any.
    pub active: Option<i64>,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// The set in force and the means to change it.
pub struct PolicyRegistry {
    engine: PolicyEngine,
    db: Database,
    default: (String, Params),
    replicas: u32,
    /// `None` only until the first reload has built a set.
    current: RwLock<Option<Arc<PolicySet>>>,
    /// Loaded components by sha256: the active ones (and, briefly, candidates).
    loaded: Mutex<HashMap<String, Policy>>,
    /// Changes (and reloads) run one at a time, so sets are swapped in generation order.
    changes: tokio::sync::Mutex<()>,
    compile_timeout: Duration,
}

/// Module names: 1-64 of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::InvalidBinding(format!(
            "module name `{name}` must be 1-64 of [a-z0-9-], not starting with `-`"
        )))
    }
}

impl PolicyRegistry {
    /// A registry over the stored policies. It has no set in force until the first
    /// [`Self::reload`]; [`crate::services::policies::start`] does that before sharing it.
    pub fn new(
        engine: PolicyEngine,
        db: Database,
        default: (String, Params),
        replicas: u32,
        compile_timeout: Duration,
    ) -> Self {
        Self {
            engine,
            db,
            default,
            replicas,
            current: RwLock::new(None),
            loaded: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            compile_timeout,
        }
    }

    /// The set in force. Hold it for the whole request.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(current.as_ref().expect("the registry builds its first set before it is shared"))
    }

    /// The database the registry stores in.
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Rebuilds the set if the stored generation moved. Returns whether it swapped.
    pub async fn reload(&self) -> Result<bool, PolicyError> {
        let _guard = self.changes.lock().await;
        self.reload_locked().await
    }

    /// Holds off every other change and reload while the guard lives.
    pub(crate) async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    pub(crate) async fn reload_locked(&self) -> Result<bool, PolicyError> {
        let generation = policies::generation(self.db.readers()).await?;
        let in_force = self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.generation);
        if in_force == Some(generation) {
            return Ok(false);
        }
        let state = policies::state(self.db.readers()).await?;
        let set = self.build(&state).await?;
        self.swap(set);
        Ok(true)
    }

    /// Puts `set` in force. Components of the new and of the previous set stay loaded (so a
    /// rollback is as quick as the change it undoes); others are dropped.
    fn swap(&self, set: PolicySet) {
        let set = Arc::new(set);
        let mut keep: std::collections::HashSet<String> = set.shas().collect();
        let previous = self.current.write().unwrap_or_else(|p| p.into_inner()).replace(Arc::clone(&set));
        keep.extend(previous.iter().flat_map(|p| p.shas()));
        lock(&self.loaded).retain(|sha, _| keep.contains(sha));
        metrics::gauge!("leaky_policy_generation").set(set.generation as f64);
        metrics::counter!("leaky_policy_swaps_total").increment(1);
        tracing::info!(generation = set.generation, "policy set swapped in");
    }

    /// Builds the set `state` describes, loading components that are not loaded yet.
    pub(crate) async fn build(&self, state: &PolicyState) -> Result<PolicySet, PolicyError> {
        for info in &state.active {
            if lock(&self.loaded).contains_key(&info.sha256) {
                continue;
            }
            let bytes = policies::component(self.db.readers(), &info.name, info.version)
                .await?
                .ok_or(PolicyError::NotFound("policy version"))?;
            let policy = self.load(bytes).await.map_err(|e| {
                PolicyError::InvalidModule(format!(
                    "stored module `{}` v{} does not load: {e}",
                    info.name, info.version
                ))
            })?;
            lock(&self.loaded).insert(info.sha256.clone(), policy);
        }
        let loaded = lock(&self.loaded);
        let inputs = Inputs {
            state,
            loaded: &loaded,
            default: (&self.default.0, self.default.1.clone()),
            replicas: self.replicas,
        };
        PolicySet::build(&inputs).map_err(|(what, e)| PolicyError::InvalidBinding(format!("{what}: {e}")))
    }

    /// Compiles and validates a component off the async workers, within the compile timeout.
    pub(crate) async fn load(&self, bytes: Vec<u8>) -> Result<Policy, PolicyError> {
        let engine = self.engine.clone();
        let compile = tokio::task::spawn_blocking(move || engine.load(&bytes));
        match tokio::time::timeout(self.compile_timeout, compile).await {
            Err(_) => Err(PolicyError::InvalidModule(format!(
                "the component did not compile within {} ms",
                self.compile_timeout.as_millis()
            ))),
            Ok(Err(join)) => Err(PolicyError::InvalidModule(format!("compiling the component failed: {join}"))),
            Ok(Ok(result)) => result.map_err(|e| PolicyError::InvalidModule(e.to_string())),
        }
    }

    /// Validates a component (world, imports, size, compilation, `configure` with `params`, one
    /// smoke decision) and stores it as a new version of `name`, or finds the version that
    /// already has these bytes. Nothing in force changes. Returns the version and whether it
    /// is new.
    pub async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        params: Option<Params>,
    ) -> Result<(VersionInfo, bool), PolicyError> {
        validate_name(name)?;
        // No change lock: storing a version changes nothing in force, and compiling may take
        // seconds that activations and the replica sync should not wait for.
        let policy = self.load(bytes.clone()).await?;
        let params = match params {
            Some(params) => params,
            None => self.bound_params(name).await?,
        };
        smoke_test(&policy, &params)?;
        let sha256 = policy.info().sha256.clone();
        let kind = policy.info().kind.as_str();
        let new = NewVersion { name, kind, sha256: &sha256, component: &bytes, source: "api" };
        let stored = policies::add_version(self.db.pool(), new).await.map_err(|e| match e {
            StoreError::Conflict(_) => {
                PolicyError::Conflict(format!("module `{name}` already exists with versions of the other kind"))
            }
            other => other.into(),
        })?;
        if stored.1 {
            metrics::counter!("leaky_policy_uploads_total", "outcome" => "stored").increment(1);
            tracing::info!(name, version = stored.0.version, %sha256, kind, "policy version stored");
        }
        Ok(stored)
    }

    /// The parameters the bindings give `name` (for the upload's smoke test).
    async fn bound_params(&self, name: &str) -> Result<Params, PolicyError> {
        if name == self.default.0 {
            return Ok(self.default.1.clone());
        }
        let state = policies::state(self.db.readers()).await?;
        Ok(state.bindings.into_iter().find(|b| b.module == name).map(|b| b.params).unwrap_or_default())
    }

    /// Makes `version` the active version of `name` on every replica. Returns the version
    /// that was active before.
    pub async fn activate(&self, name: &str, version: i64) -> Result<Option<i64>, PolicyError> {
        let _guard = self.changes.lock().await;
        let info = policies::version(self.db.readers(), name, version)
            .await?
            .ok_or(PolicyError::NotFound("policy version"))?;
        self.check(|state| set_active(state, info)).await?;
        let before = policies::activate(self.db.pool(), name, version).await?;
        self.reload_locked().await?;
        tracing::info!(name, version, ?before, "policy version activated");
        Ok(before)
    }

    /// Makes the version active before the latest activation of `name` active again. Returns
    /// `(the version that was active, the version active now)`.
    pub async fn rollback(&self, name: &str) -> Result<(i64, i64), PolicyError> {
        let _guard = self.changes.lock().await;
        let Some((active, target)) = policies::rollback_target(self.db.pool(), name).await? else {
            let known = policies::versions(self.db.pool()).await?.iter().any(|v| v.name == name);
            return Err(if known {
                PolicyError::Conflict(format!("module `{name}` has no earlier activation to roll back to"))
            } else {
                PolicyError::NotFound("policy")
            });
        };
        let info =
            policies::version(self.db.pool(), name, target).await?.ok_or(PolicyError::NotFound("policy version"))?;
        self.check(|state| set_active(state, info)).await?;
        let version = policies::rollback(self.db.pool(), name).await?.unwrap_or(target);
        self.reload_locked().await?;
        tracing::info!(name, from = active, to = version, "policy rolled back");
        Ok((active, version))
    }

    /// Replaces every binding.
    pub async fn put_bindings(&self, bindings: Vec<Binding>) -> Result<(), PolicyError> {
        let _guard = self.changes.lock().await;
        self.check(|state| state.bindings = bindings.clone()).await?;
        policies::replace_bindings(self.db.pool(), &bindings).await?;
        self.reload_locked().await?;
        Ok(())
    }

    /// Builds the set the stored state would give after `change`; an error means the change
    /// must not be stored.
    pub(crate) async fn check(&self, change: impl FnOnce(&mut PolicyState)) -> Result<PolicyState, PolicyError> {
        let mut state = policies::state(self.db.readers()).await?;
        change(&mut state);
        self.build(&state).await?;
        Ok(state)
    }

    /// Every module with its versions and its active version.
    pub async fn list(&self) -> Result<Vec<ModuleListing>, PolicyError> {
        let state = policies::state(self.db.readers()).await?;
        let mut modules: Vec<ModuleListing> = Vec::new();
        for v in policies::versions(self.db.readers()).await? {
            match modules.last_mut() {
                Some(m) if m.name == v.name => m.versions.push(v),
                _ => modules.push(ModuleListing {
                    name: v.name.clone(),
                    kind: v.kind.clone(),
                    active: state.active.iter().find(|a| a.name == v.name).map(|a| a.version),
                    versions: vec![v],
                }),
            }
        }
        Ok(modules)
    }

    /// The stored bindings.
    pub async fn bindings(&self) -> Result<Vec<Binding>, PolicyError> {
        Ok(policies::state(self.db.readers()).await?.bindings)
    }
}

/// Puts `info` in place of the active version of its module.
pub(crate) fn set_active(state: &mut PolicyState, info: VersionInfo) {
    state.active.retain(|v| v.name != info.name);
    state.active.push(info);
}

/// `configure` with `params`, then one decision (or one pricing), checked like any other.
fn smoke_test(policy: &Policy, params: &Params) -> Result<(), PolicyError> {
    let refused = |what: &str, e: &dyn std::fmt::Display| {
        PolicyError::InvalidModule(format!(
            "{what}: {e} (pass the parameters to test with as query parameters, e.g. ?capacity=100)"
        ))
    };
    let now_ms = u64::try_from(leaky_store::now_ms()).unwrap_or(0);
    match policy {
        Policy::RateLimiter(limiter) => {
            let config = limiter.configure(params).map_err(|e| refused("configure() refused the parameters", &e))?;
            limiter
                .decide(&config, None, Request { tokens: 1, now_ms })
                .map_err(|e| PolicyError::InvalidModule(format!("the smoke decision failed: {e}")))?;
        }
        Policy::QuotaRule(rule) => {
            let config = rule.configure(params).map_err(|e| refused("configure() refused the parameters", &e))?;
            let usage =
                Usage { subject: "smoke-test".into(), provider: "smoke-test".into(), model: None, tokens: 1, now_ms };
            rule.price(&config, &usage)
                .map_err(|e| PolicyError::InvalidModule(format!("the smoke pricing failed: {e}")))?;
        }
    }
    Ok(())
}
