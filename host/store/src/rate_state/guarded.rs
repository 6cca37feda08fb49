//! A shared rate state behind a per-call deadline and a circuit breaker.
//!
//! The deadline is for the backend's silence, not for one call's wait: a call fails once a
//! whole deadline passed in which the backend answered nothing at all (dead, hung, or
//! unreachable). A call that is merely queued behind others, while the backend keeps
//! answering them (this process saturated under a load spike, say), waits on, deadline after
//! deadline (up to [`MAX_DEADLINES`]). Counting those as failures opened the breaker under
//! load alone, and turned every request into a refusal while the backend was healthy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::breaker::{CircuitBreaker, Permit};
use super::{BoxFuture, RateKey, RateStateError, SharedRateState, StoredRate, Swap};

/// Deadlines a call waits at most while the backend answers others (then it fails anyway: its
/// own answer was lost).
const MAX_DEADLINES: u32 = 20;

/// Any backend, with a deadline per call and a breaker in front.
pub struct Guarded<S> {
    inner: S,
    breaker: CircuitBreaker,
    timeout: Duration,
    /// Calls the backend has answered, successfully or not, since the start.
    answered: AtomicU64,
}

impl<S: SharedRateState> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: CircuitBreaker, timeout: Duration) -> Self {
        Self { inner, breaker, timeout, answered: AtomicU64::new(0) }
    }

    async fn call<T>(&self, mut call: BoxFuture<'_, Result<T, RateStateError>>) -> Result<T, RateStateError> {
        if let Permit::Wait(left) = self.breaker.permit() {
            return Err(RateStateError::Open { retry_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX) });
        }
        let started = Instant::now();
        let mut deadlines = 0;
        let result = loop {
            deadlines += 1;
            let answered = self.answered.load(Ordering::Relaxed);
            match tokio::time::timeout(self.timeout, &mut call).await {
                Ok(result) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    break result;
                }
                // The backend answered other calls meanwhile: this one is queued, not lost.
                Err(_) if deadlines < MAX_DEADLINES && self.answered.load(Ordering::Relaxed) != answered => {
                    metrics::counter!("leaky_rate_state_slow_calls_total").increment(1);
                }
                Err(_) => {
                    let waited = self.timeout.saturating_mul(deadlines);
                    break Err(RateStateError::Backend(format!("no answer within {} ms", waited.as_millis())));
                }
            }
        };
        match &result {
            Ok(_) | Err(RateStateError::Corrupt(_)) => self.breaker.success(),
            Err(err) => self.breaker.failure(started, err),
        }
        result
    }
}

impl<S: SharedRateState> SharedRateState for Guarded<S> {
    fn get<'a>(&'a self, key: &'a RateKey) -> BoxFuture<'a, Result<Option<StoredRate>, RateStateError>> {
        Box::pin(self.call(self.inner.get(key)))
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a RateKey,
        expected: Option<&'a StoredRate>,
        new: &'a StoredRate,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Swap, RateStateError>> {
        Box::pin(self.call(self.inner.compare_and_set(key, expected, new, ttl_ms)))
    }

    fn retry_in(&self) -> Duration {
        self.breaker.retry_in()
    }
}
