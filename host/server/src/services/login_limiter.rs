//! Limits login attempts per username with our own token bucket: the same sandboxed component
//! that limits LLM spending.

use dashmap::DashMap;
use leaky_engine::{Outcome, Request, Words};

use crate::error::ApiError;
use crate::services::policies::BoundPolicy;

/// Per-username attempt buckets.
pub struct LoginLimiter {
    policy: BoundPolicy,
    buckets: DashMap<String, Option<Words>>,
}

impl LoginLimiter {
    /// A limiter running `policy` (a token bucket) per username.
    pub fn new(policy: BoundPolicy) -> Self {
        Self { policy, buckets: DashMap::new() }
    }

    /// Spends one attempt of `username`; refuses with the wait when none is left.
    pub fn attempt(&self, username: &str) -> Result<(), ApiError> {
        let key = username.to_ascii_lowercase();
        let mut entry = self.buckets.entry(key).or_insert(None);
        let state = *entry;
        let request = Request { tokens: 1, now_ms: u64::try_from(leaky_store::now_ms()).unwrap_or(0) };
        let decision = self.policy.limiter.decide(&self.policy.config, state, request).map_err(anyhow::Error::from)?;
        match decision.verdict.outcome {
            Outcome::Allowed => {
                *entry = Some(decision.state);
                Ok(())
            }
            _ => Err(ApiError::TooManyAttempts { retry_after_ms: decision.verdict.retry_after_ms.max(1) }),
        }
    }
}
