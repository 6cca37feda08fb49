//! Decisions with rate state shared by replicas.
//!
//! A decision starts from the subject's state in the shared store, decides and reserves the
//! quotas under the account locks, then writes the new state back by compare-and-set. If another
//! replica wrote first, the store answers with the newer state, the reservation is released and
//! the decision is made again from it, so two replicas never both spend the same capacity.
//!
//! The state a decision starts from is the one this process last saw stored for the subject
//! (what it wrote, or what a lost compare-and-set answered), kept beside the subject's lock
//! stripe; only a subject it has not seen is read first. So a decision costs one round trip to
//! the store unless another replica wrote the same subject since, and then two, as when every
//! decision read first. A remembered state that is stale (another replica wrote, the key
//! expired) can never make an admission stand: its compare-and-set loses. A refusal from it is
//! not checked, because the stored state only moves towards less capacity, or back to what time
//! alone gives back; where it moved otherwise (capacity given back after a failed commit, a
//! store that lost its data) the remembered state is the stricter one. While the store is
//! unavailable (its circuit breaker is open, or a call fails) a decision either fails closed (429
//! until the store is back) or fails open on a local limiter holding a share of the limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use leaky_engine::{Outcome as RateOutcome, Verdict};
use leaky_store::rate_state::{RateKey, RateStateError, SharedRateState, StoredRate, Swap};
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
/// Subjects whose stored state a stripe remembers at most; a full stripe forgets them all and
/// reads them again. 64 Ki subjects in all.
const KNOWN_PER_STRIPE: usize = 64;

/// What this process last saw stored, per subject of one stripe (`None`: absent).
type Known = HashMap<RateKey, Option<StoredRate>>;

/// The shared rate state and what to do without it.
pub struct SharedRate {
    store: Arc<dyn SharedRateState>,
    fail_open: bool,
    stripes: Box<[tokio::sync::Mutex<Known>]>,
}

/// Remembers `state` as stored for `key`, making room in a full stripe.
fn remember(known: &mut Known, key: &RateKey, state: Option<StoredRate>) {
    if let Some(slot) = known.get_mut(key) {
        *slot = state;
        return;
    }
    if known.len() >= KNOWN_PER_STRIPE {
        known.clear();
    }
    known.insert(key.clone(), state);
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

fn state(stored: &StoredRate) -> RateState {
    let [a, b, c, d] = stored.words;
    RateState { strategy: stored.strategy.as_str().into(), words: (a, b, c, d) }
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
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(Known::new())).collect();
        Self { store, fail_open, stripes }
    }

    /// The stored state of (user, provider).
    pub async fn read(&self, user: Uuid, provider: &str) -> Result<Option<RateState>, RateStateError> {
        Ok(self.store.get(&key(user, provider)).await?.as_ref().map(state))
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
        let mut known = self.stripe(&key).lock().await;
        let mut stored_now = match known.get(&key) {
            Some(remembered) => remembered.clone(),
            None => match self.read_unknown(&key).await {
                Ok(stored) => stored,
                Err(err) => return self.unavailable(attempt, binding, &err),
            },
        };
        for round in 0..MAX_ROUNDS {
            let read = stored_now.as_ref().map(state);
            // The shadow is counted once per request, not once per round.
            let shadow = if round == 0 { binding.shadow.as_deref() } else { None };
            let reserved = attempt.reserve(&binding.policy, shadow, RateSource::Shared(read))?;
            let (Some((_, applied)), Some(debit), ConsumeOutcome::Allowed { rate, .. }) =
                (&reserved.rate, &reserved.debit, &reserved.outcome)
            else {
                // A refusal writes nothing: what was stored still is, as far as this process
                // knows.
                remember(&mut known, &key, stored_now);
                return Ok((reserved, &binding.policy));
            };
            let ttl = rate.reset_after_ms.saturating_add(TTL_MARGIN_MS);
            let new = stored(applied);
            match self.store.compare_and_set(&key, stored_now.as_ref(), &new, ttl).await {
                Ok(Swap::Stored) => {
                    remember(&mut known, &key, Some(new));
                    return Ok((reserved, &binding.policy));
                }
                Ok(Swap::Lost(current)) => {
                    attempt.release(Periods::of(debit), None, false);
                    metrics::counter!("leaky_rate_state_conflicts_total").increment(1);
                    stored_now = current;
                    // Another replica wrote since this process last looked. Decide again from
                    // what it wrote at once; if that loses too, the two are writing at the same
                    // moment: let the other pass first, or a busy replica could win every round.
                    if round > 0 {
                        tokio::time::sleep(backoff(round - 1)).await;
                    }
                }
                Err(err) => {
                    attempt.release(Periods::of(debit), None, false);
                    known.remove(&key);
                    return self.unavailable(attempt, binding, &err);
                }
            }
        }
        remember(&mut known, &key, stored_now);
        metrics::counter!("leaky_rate_state_contended_total").increment(1);
        Ok((Reserved { outcome: retry_later(10), debit: None, rate: None, local: false }, &binding.policy))
    }

    /// Reads the stored state of a subject this process does not remember.
    async fn read_unknown(&self, key: &RateKey) -> Result<Option<StoredRate>, RateStateError> {
        metrics::counter!("leaky_rate_state_reads_total").increment(1);
        self.store.get(key).await
    }

    fn stripe(&self, key: &RateKey) -> &tokio::sync::Mutex<Known> {
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
        let mut known = self.stripe(&key).lock().await;
        let read = stored(read);
        match self.store.compare_and_set(&key, Some(&stored(applied)), &read, TTL_MARGIN_MS).await {
            Ok(Swap::Stored) => remember(&mut known, &key, Some(read)),
            Ok(Swap::Lost(current)) => remember(&mut known, &key, current),
            Err(err) => {
                known.remove(&key);
                tracing::debug!(error = %err, "could not give back rate capacity after a failed commit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u64) -> StoredRate {
        StoredRate { strategy: "fixed-window".into(), words: [n, 0, 0, 0] }
    }

    #[test]
    fn a_stripe_remembers_a_bounded_number_of_subjects() {
        let mut known = Known::new();
        let keys: Vec<RateKey> = (0..=KNOWN_PER_STRIPE).map(|i| key(Uuid::from_u128(i as u128), "openai")).collect();
        for (i, k) in keys.iter().take(KNOWN_PER_STRIPE).enumerate() {
            remember(&mut known, k, Some(rate(i as u64)));
        }
        assert_eq!(known.len(), KNOWN_PER_STRIPE);
        remember(&mut known, &keys[0], None);
        assert_eq!(known.len(), KNOWN_PER_STRIPE, "a subject it knows is updated in place");
        assert_eq!(known.get(&keys[0]), Some(&None), "absent is remembered too");
        remember(&mut known, &keys[KNOWN_PER_STRIPE], Some(rate(7)));
        assert_eq!(known.len(), 1, "a full stripe forgets the others, which are read again");
        assert_eq!(known.get(&keys[KNOWN_PER_STRIPE]), Some(&Some(rate(7))));
    }
}
