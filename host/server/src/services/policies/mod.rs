//! Policies: which rate limiter, shadow and quota rule apply to which provider, and their
//! lifecycle (upload, activate, rollback, bindings, hot reload from the policy directory,
//! convergence of every replica).
//!
//! - [`bound`]: a component configured with its parameters.
//! - [`set`]: the immutable set in force, swapped whole.
//! - [`registry`]: the set in force and every change to it, validated before it is stored.
//! - [`directory`]: importing and watching the policy directory.
//! - [`sync`]: following changes made through other replicas.

pub mod bound;
pub mod directory;
pub mod registry;
pub mod set;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use leaky_engine::PolicyEngine;
use leaky_store::Database;

pub use bound::{BoundPolicy, BoundQuotaRule, Params, default_params, load_module};
pub use registry::{PolicyError, PolicyRegistry};
pub use set::{PolicySet, RateBinding};

use crate::settings::Settings;

/// Opens the registry: imports what changed in the policy directory, builds the stored set,
/// and starts the directory watcher (if `policies.watch`) and the generation follower.
pub async fn start(engine: PolicyEngine, db: Database, settings: &Settings) -> anyhow::Result<Arc<PolicyRegistry>> {
    let bucket = &settings.token.bucket;
    let policy = &settings.policies;
    let default = (bucket.strategy.clone(), default_params(bucket)?);
    let replicas = match settings.redis.when_unavailable {
        crate::settings::WhenUnavailable::FailOpen => settings.redis.replicas.max(1),
        crate::settings::WhenUnavailable::FailClosed => 1,
    };
    let compile_timeout = Duration::from_millis(policy.compile_timeout_ms);
    let registry = Arc::new(PolicyRegistry::new(engine, db, default, replicas, compile_timeout));
    let hint = "the policy set cannot be built (build the components with `cargo xtask guests`)";
    directory::import(&registry, &policy.dir).await.context(hint)?;
    registry.reload().await.context(hint)?;
    if policy.watch {
        directory::spawn_watcher(Arc::downgrade(&registry), policy.dir.clone(), ms(policy.watch_interval_ms));
    }
    sync::spawn(Arc::downgrade(&registry), ms(policy.sync_interval_ms));
    Ok(registry)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis.max(10))
}
