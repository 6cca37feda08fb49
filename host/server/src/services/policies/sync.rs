//! Replica convergence: every replica checks the stored policy generation and rebuilds its set
//! when another replica (or an admin request it did not serve) changed it. A replica that starts
//! later builds the stored set at start.

use std::sync::Weak;
use std::time::Duration;

use crate::services::policies::registry::PolicyRegistry;

/// Checks the generation every `interval` until the registry is dropped.
pub fn spawn(registry: Weak<PolicyRegistry>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticker.tick().await;
            let Some(registry) = registry.upgrade() else { return };
            match registry.reload().await {
                Ok(swapped) => {
                    if swapped {
                        tracing::info!(generation = registry.snapshot().generation, "converged on a policy change");
                    }
                    failing = false;
                }
                Err(err) => {
                    metrics::counter!("leaky_policy_reloads_total", "outcome" => "failed").increment(1);
                    if !failing {
                        tracing::error!(error = %err, "cannot build the stored policy set; the set in force stays");
                    }
                    failing = true;
                }
            }
        }
    });
}
