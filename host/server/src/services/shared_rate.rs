//! Decisions with rate state shared by replicas.
//!
//! A decision reads the subject's state from the shared store, decides and reserves the quotas
//! under the account locks, then writes the new state back by compare-and-set. If another
//! replica wrote first, the reservation is released and the decision is made again from the
//! newer state, so two replicas never both spend the same capacity. While the store is
//! unavailable (its circuit breaker is open, or a call fails) a decision either fails closed (429
//! until the store is back) or fails open on a local limiter holding a share of the limit.

use std::sync::Arc;
use std::time::Duration;

use leaky_engine::{Outcome as RateOutcome, Verdict};
use leaky_store::rate_state::{RateKey, RateStateError, SharedRateState, StoredRate};
use uuid::Uuid;

use crate::error::ApiError;
use crate::services::accounts::RateState;
use crate::services::consume::ConsumeOutcome;
use crate::services::policies::{BoundPolicy, RateBinding};
use crate::services::reserve::{Attempt, Periods, RateSource, Reserved};

/// Compare-and-set rounds before a request on a hotly contended subject is told to retry.
const MAX_ROUNDS: usize = 16;
/// Stored state outlives the moment its limiter is fully reset by this much.
const TTL_MARGIN_MS: u64 = 60_000;

/// Lock stripes serialising this process's decisions per subject (see [`SharedRate::decide`]).
const STRIPES: usize = 1024;

/// The shared rate state and what to do without it.
pub struct SharedRate {
    store: Arc<dyn SharedRateState>,
    fail_open: bool,
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

/// How long to wait after losing the compare-and-set in `round` (from 0): up to 100 us times
/// the round, jittered so two replicas that collided do not collide again.
fn backoff(round: usize) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let ceiling = 100 * (u64::try_from(round).unwrap_or(0) + 1);
    Duration::from_micros(u64::from(nanos) % ceiling)
}

fn key(user: Uuid, provider: &str) -> RateKey {
    RateKey { subject: user.to_string(), provider: provider.to_string() }
}

fn stored(state: &RateState) -> StoredRate {
    let (a, b, c, d) = state.words;
    StoredRate { strategy: state.strategy.to_string(), words: [a, b, c, d] }
}

fn state(stored: StoredRate) -> RateState {
    let [a, b, c, d] = stored.words;
    RateState { strategy: stored.strategy.into(), words: (a, b, c, d) }
}

/// A refusal that asks the caller to come back in `wait_ms`.
fn retry_later(wait_ms: u64) -> ConsumeOutcome {
    let rate = Verdict {
        outcome: RateOutcome::RateLimited,
        limit: 0,
        remaining: 0,
        retry_after_ms: wait_ms,
        reset_after_ms: wait_ms,
    };
    ConsumeOutcome::RateLimited { rate }
}

impl SharedRate {
    /// Decisions over `store`; `fail_open` picks what happens while it is unavailable.
    pub fn new(store: Arc<dyn SharedRateState>, fail_open: bool) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { store, fail_open, stripes }
    }

    /// The stored state of (user, provider).
    pub async fn read(&self, user: Uuid, provider: &str) -> Result<Option<RateState>, RateStateError> {
        Ok(self.store.get(&key(user, provider)).await?.map(state))
    }

    /// Decides one request with `binding`; returns the reservation and the policy that decided.
    ///
    /// This process's decisions for one subject take turns (a lock stripe held from the read to
    /// the compare-and-set): concurrent requests of one user would otherwise mostly lose the
    /// compare-and-set to each other, and only other replicas' writes are left to conflict.
    pub async fn decide<'b>(
        &self,
        attempt: &Attempt<'_>,
        binding: &'b RateBinding,
    ) -> Result<(Reserved, &'b Arc<BoundPolicy>), ApiError> {
        let key = key(attempt.req.user_id, &attempt.req.provider);
        let _turn = self.stripe(&key).lock().await;
        for round in 0..MAX_ROUNDS {
            let read = match self.store.get(&key).await {
                Ok(stored) => stored.map(state),
                Err(err) => return self.unavailable(attempt, binding, &err),
            };
            // The shadow is counted once per request, not once per round.
            let shadow = if round == 0 { binding.shadow.as_deref() } else { None };
            let reserved = attempt.reserve(&binding.policy, shadow, RateSource::Shared(read.clone()))?;
            let (Some((_, applied)), Some(debit), ConsumeOutcome::Allowed { rate, .. }) =
                (&reserved.rate, &reserved.debit, &reserved.outcome)
            else {
                return Ok((reserved, &binding.policy));
            };
            let ttl = rate.reset_after_ms.saturating_add(TTL_MARGIN_MS);
            let expected = read.as_ref().map(stored);
            match self.store.compare_and_set(&key, expected.as_ref(), &stored(applied), ttl).await {
                Ok(true) => return Ok((reserved, &binding.policy)),
                Ok(false) => {
                    attempt.release(Periods::of(debit), None, false);
                    metrics::counter!("leaky_rate_state_conflicts_total").increment(1);
                    // Another replica wrote between the read and the write: let it pass
                    // before reading again, or a busy replica could win every round.
                    tokio::time::sleep(backoff(round)).await;
                }
                Err(err) => {
                    attempt.release(Periods::of(debit), None, false);
                    return self.unavailable(attempt, binding, &err);
                }
            }
        }
        metrics::counter!("leaky_rate_state_contended_total").increment(1);
        Ok((Reserved { outcome: retry_later(10), debit: None, rate: None, local: false }, &binding.policy))
    }

    fn stripe(&self, key: &RateKey) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((&key.subject, &key.provider));
        &self.stripes[usize::try_from(hash % STRIPES as u64).unwrap_or(0)]
    }

    /// The decision while the shared state cannot be used.
    fn unavailable<'b>(
        &self,
        attempt: &Attempt<'_>,
        binding: &'b RateBinding,
        err: &RateStateError,
    ) -> Result<(Reserved, &'b Arc<BoundPolicy>), ApiError> {
        let mode = if self.fail_open { "fail_open" } else { "fail_closed" };
        metrics::counter!("leaky_rate_state_unavailable_total", "mode" => mode).increment(1);
        tracing::debug!(error = %err, mode, "rate state unavailable");
        if self.fail_open {
            let local = binding.local();
            return Ok((attempt.reserve(local, None, RateSource::Local)?, local));
        }
        let wait = u64::try_from(self.store.retry_in().as_millis()).unwrap_or(u64::MAX).max(100);
        Ok((Reserved { outcome: retry_later(wait), debit: None, rate: None, local: false }, &binding.policy))
    }

    /// Puts back the state a reservation replaced, when its commit failed and nothing has
    /// written since (best effort: if it cannot, the limiter stays the stricter).
    pub async fn restore(&self, user: Uuid, provider: &str, applied: &RateState, read: Option<&RateState>) {
        let Some(read) = read else { return };
        let key = key(user, provider);
        if let Err(err) = self.store.compare_and_set(&key, Some(&stored(applied)), &stored(read), TTL_MARGIN_MS).await {
            tracing::debug!(error = %err, "could not give back rate capacity after a failed commit");
        }
    }
}
