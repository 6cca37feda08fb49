//! Limits login attempts per username with our own token bucket: the same sandboxed component
//! that limits LLM spending.
//!
//! A bucket exists for every username tried, known or not, so the map would grow with every
//! name an attacker makes up. Once the map passes a threshold, buckets that have refilled
//! completely are dropped: a full bucket is what a name nobody tried gets, so dropping one
//! changes no answer. The threshold then doubles past what is left, so a sweep's cost is spread
//! over at least as many attempts as it looked at.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use leaky_engine::{Outcome, Request, Words};

use crate::error::ApiError;
use crate::services::policies::BoundPolicy;

/// Buckets kept before the first sweep.
const SWEEP_AT: usize = 4096;

/// Per-username attempt buckets.
pub struct LoginLimiter {
    policy: BoundPolicy,
    buckets: DashMap<String, Option<Words>>,
    sweep_at: AtomicUsize,
}

impl LoginLimiter {
    /// A limiter running `policy` (a token bucket) per username.
    pub fn new(policy: BoundPolicy) -> Self {
        Self { policy, buckets: DashMap::new(), sweep_at: AtomicUsize::new(SWEEP_AT) }
    }

    /// Spends one attempt of `username`; refuses with the wait when none is left.
    pub fn attempt(&self, username: &str) -> Result<(), ApiError> {
        self.attempt_at(username, u64::try_from(leaky_store::now_ms()).unwrap_or(0))
    }

    fn attempt_at(&self, username: &str, now_ms: u64) -> Result<(), ApiError> {
        if self.buckets.len() >= self.sweep_at.load(Ordering::Relaxed) {
            self.sweep(now_ms);
        }
        let key = username.to_ascii_lowercase();
        let mut entry = self.buckets.entry(key).or_insert(None);
        let state = *entry;
        let request = Request { tokens: 1, now_ms };
        let decision = self.policy.limiter.decide(&self.policy.config, state, request).map_err(anyhow::Error::from)?;
        match decision.verdict.outcome {
            Outcome::Allowed => {
                *entry = Some(decision.state);
                Ok(())
            }
            _ => Err(ApiError::TooManyAttempts { retry_after_ms: decision.verdict.retry_after_ms.max(1) }),
        }
    }

    /// Drops the buckets that are full again at `now_ms` (a probe of zero tokens finds all of
    /// the capacity left), and sets the next threshold.
    fn sweep(&self, now_ms: u64) {
        // What cannot be read is kept; the next sweep tries again.
        self.buckets.retain(|_, state| !self.policy.is_full_again(*state, now_ms));
        let left = self.buckets.len();
        self.sweep_at.store(SWEEP_AT.max(left.saturating_mul(2)), Ordering::Relaxed);
        metrics::gauge!("leaky_login_buckets").set(left as f64);
    }

    /// How many usernames have a bucket.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::policies::load_module;

    /// A bucket of 3 attempts, one more every second.
    fn limiter() -> LoginLimiter {
        let engine = leaky_engine::PolicyEngine::new(leaky_engine::EngineConfig::default()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let module = load_module(&engine, &dir, "token-bucket").unwrap();
        let params = vec![("capacity".into(), "3".into()), ("refill_rate_per_second".into(), "1".into())];
        LoginLimiter::new(BoundPolicy::bind("token-bucket", 0, module, params).unwrap())
    }

    #[test]
    fn names_tried_once_are_forgotten_when_their_bucket_is_full_again() {
        let limiter = limiter();
        let t0 = 1_000_000;
        for _ in 0..3 {
            limiter.attempt_at("Mallory", t0).unwrap();
        }
        assert!(limiter.attempt_at("mallory", t0).is_err(), "a name's case does not give it more attempts");
        for i in 0..SWEEP_AT - 1 {
            limiter.attempt_at(&format!("made-up-{i}"), t0).unwrap();
        }
        assert_eq!(limiter.len(), SWEEP_AT);

        // Half a second later nothing has refilled: the sweep keeps every bucket.
        limiter.attempt_at("made-up-next", t0 + 500).unwrap();
        assert_eq!(limiter.len(), SWEEP_AT + 1);
        assert_eq!(limiter.sweep_at.load(Ordering::Relaxed), 2 * SWEEP_AT);

        // A second later the names tried once are full again and go; mallory, who spent all
        // three attempts, has one back of three and stays, still limited.
        limiter.sweep(t0 + 1500);
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.sweep_at.load(Ordering::Relaxed), SWEEP_AT);
        limiter.attempt_at("mallory", t0 + 1500).unwrap();
        assert!(limiter.attempt_at("mallory", t0 + 1500).is_err(), "the kept bucket still counts");
    }
}
