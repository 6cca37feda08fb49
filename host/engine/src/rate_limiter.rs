//! A loaded rate-limit policy, and the host's checks on every verdict it returns.

use std::sync::Arc;

use crate::bindings::{Outcome, Request, Verdict, Words, rate_api};
use crate::error::{GuestError, LoadError};
use crate::inspect::ComponentInfo;
use crate::pool::InstancePool;

/// The longest wait a verdict may announce: about 400 days. Anything longer is nonsense.
const MAX_WAIT_MS: u64 = 400 * 24 * 3600 * 1000;

/// A rate-limit component, ready to decide. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    info: ComponentInfo,
    strategy: String,
    pool: InstancePool<rate_api::Guest>,
}

/// Parameters validated by a rate limiter's `configure`, in the limiter's own encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimiterConfig {
    words: Words,
}

/// A checked verdict and the state to store if the host commits it.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What the limiter decided.
    pub verdict: Verdict,
    /// The subject's next state.
    pub state: Words,
}

/// Whether `name` may name a strategy: 1-64 of `[a-z0-9._-]`. The name goes into answers as it
/// is (the `RateLimit` header fields quote it), so nothing that needs escaping is accepted.
fn is_strategy_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

impl RateLimiter {
    /// Wraps a loaded component; asks for its strategy name once, as a smoke test.
    pub(crate) fn new(info: ComponentInfo, pool: InstancePool<rate_api::Guest>) -> Result<Self, LoadError> {
        let strategy = pool
            .call(|store, guest| guest.call_strategy(store))
            .map_err(|e| LoadError::Invalid(format!("`strategy` failed: {e}")))?;
        if !is_strategy_name(&strategy) {
            return Err(LoadError::Invalid(format!("`strategy` must be 1-64 of [a-z0-9._-], got {strategy:?}")));
        }
        Ok(Self { inner: Arc::new(Inner { info, strategy, pool }) })
    }

    /// Facts about the component.
    pub fn info(&self) -> &ComponentInfo {
        &self.inner.info
    }

    /// The strategy's name, e.g. `leaky-bucket`.
    pub fn strategy(&self) -> &str {
        &self.inner.strategy
    }

    /// Idle warm instances right now.
    pub fn idle_instances(&self) -> usize {
        self.inner.pool.idle_count()
    }

    /// Validates parameters; [`GuestError::BadParams`] names the offending one.
    pub fn configure(&self, params: &[(String, String)]) -> Result<RateLimiterConfig, GuestError> {
        let answer = self.inner.pool.call(|store, guest| guest.call_configure(store, &params.to_vec()))?;
        let words = answer.map_err(GuestError::BadParams)?;
        Ok(RateLimiterConfig { words })
    }

    /// Decides one request. The verdict is checked before it is returned.
    pub fn decide(
        &self,
        config: &RateLimiterConfig,
        state: Option<Words>,
        request: Request,
    ) -> Result<Decision, GuestError> {
        let (verdict, state) =
            self.inner.pool.call(|store, guest| guest.call_decide(store, config.words, state, request))?;
        check_verdict(&verdict, request.tokens)?;
        Ok(Decision { verdict, state })
    }
}

/// Refuses a verdict that contradicts itself or the request.
fn check_verdict(v: &Verdict, tokens: u64) -> Result<(), GuestError> {
    let bad = |why: String| Err(GuestError::InvalidAnswer(why));
    if v.remaining > v.limit {
        return bad(format!("remaining {} exceeds limit {}", v.remaining, v.limit));
    }
    if v.retry_after_ms > MAX_WAIT_MS || v.reset_after_ms > MAX_WAIT_MS {
        return bad(format!("waits of {} / {} ms are beyond any window", v.retry_after_ms, v.reset_after_ms));
    }
    match v.outcome {
        Outcome::Allowed if tokens > v.limit => bad(format!("allowed {tokens} tokens past its limit {}", v.limit)),
        Outcome::Allowed if v.retry_after_ms != 0 => bad("allowed with a retry-after".into()),
        Outcome::RateLimited if tokens > v.limit => {
            bad(format!("rate-limited {tokens} tokens that can never fit its limit {}", v.limit))
        }
        Outcome::RateLimited if v.retry_after_ms == 0 => bad("rate-limited without a retry-after".into()),
        Outcome::ExceedsCapacity if tokens <= v.limit => {
            bad(format!("claims {tokens} tokens exceed its limit {}", v.limit))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(outcome: Outcome, limit: u64, remaining: u64, retry: u64) -> Verdict {
        Verdict { outcome, limit, remaining, retry_after_ms: retry, reset_after_ms: 0 }
    }

    #[test]
    fn strategy_names_need_no_escaping() {
        for name in ["leaky-bucket", "token_bucket.v2", "a", &"x".repeat(64)] {
            assert!(is_strategy_name(name), "{name}");
        }
        for name in ["", "Leaky", "two words", "quote\"d", "new\nline", "caf\u{e9}", &"x".repeat(65)] {
            assert!(!is_strategy_name(name), "{name:?}");
        }
    }

    #[test]
    fn consistent_verdicts_pass() {
        assert!(check_verdict(&verdict(Outcome::Allowed, 10, 5, 0), 5).is_ok());
        assert!(check_verdict(&verdict(Outcome::RateLimited, 10, 2, 300), 5).is_ok());
        assert!(check_verdict(&verdict(Outcome::ExceedsCapacity, 10, 10, 0), 11).is_ok());
    }

    #[test]
    fn contradictions_are_refused() {
        for (v, tokens) in [
            (verdict(Outcome::Allowed, 10, 11, 0), 1),
            (verdict(Outcome::Allowed, 10, 0, 0), 11),
            (verdict(Outcome::Allowed, 10, 0, 5), 1),
            (verdict(Outcome::RateLimited, 10, 0, 0), 1),
            (verdict(Outcome::RateLimited, 10, 0, 5), 11),
            (verdict(Outcome::ExceedsCapacity, 10, 0, 0), 10),
            (verdict(Outcome::RateLimited, 10, 0, u64::MAX), 1),
        ] {
            assert!(matches!(check_verdict(&v, tokens), Err(GuestError::InvalidAnswer(_))), "{v:?} for {tokens}");
        }
    }
}
