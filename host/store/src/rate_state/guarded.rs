//! A shared rate state behind a per-call deadline and a circuit breaker.

use std::time::Duration;

use super::breaker::{CircuitBreaker, Permit};
use super::{BoxFuture, RateKey, RateStateError, SharedRateState, StoredRate};

/// Any backend, with a deadline per call and a breaker in front.
pub struct Guarded<S> {
    inner: S,
    breaker: CircuitBreaker,
    timeout: Duration,
}

impl<S: SharedRateState> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: CircuitBreaker, timeout: Duration) -> Self {
        Self { inner, breaker, timeout }
    }

    async fn call<T>(&self, call: BoxFuture<'_, Result<T, RateStateError>>) -> Result<T, RateStateError> {
        if let Permit::Wait(left) = self.breaker.permit() {
            return Err(RateStateError::Open { retry_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX) });
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RateStateError::Backend(format!("no answer within {} ms", self.timeout.as_millis()))),
        };
        match &result {
            Ok(_) | Err(RateStateError::Corrupt(_)) => self.breaker.success(),
            Err(err) => self.breaker.failure(err),
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
    ) -> BoxFuture<'a, Result<bool, RateStateError>> {
        Box::pin(self.call(self.inner.compare_and_set(key, expected, new, ttl_ms)))
    }

    fn retry_in(&self) -> Duration {
        self.breaker.retry_in()
    }
}
