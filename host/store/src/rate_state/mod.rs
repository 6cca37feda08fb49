//! Shared rate-limiter state: where replicas keep the state their decisions start from.
//!
//! The engine decides; the store arbitrates. A decision reads a subject's state, decides, and
//! writes the new state back only if the stored state is still the one it read
//! ([`SharedRateState::compare_and_set`]); if another replica wrote first, the store answers
//! with the newer state and the decision is made again from it. So two replicas never both
//! spend the same capacity, and a replica that remembers what it last wrote needs no read
//! before it decides: one round trip a decision while no other replica writes the same key.
//!
//! [`redis::RedisRateState`] is the backend; [`guarded::Guarded`] wraps any backend in a
//! deadline per call and a [`breaker::CircuitBreaker`]. (The embedded default keeps rate state
//! in the process's own account book and needs none of this.)

pub mod breaker;
mod cas_batch;
pub mod guarded;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

/// Whose state: one (user, provider).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// The user, as text.
    pub subject: String,
    /// The provider.
    pub provider: String,
}

/// A limiter's state and the strategy that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRate {
    /// The strategy (it names the layout of `words`).
    pub strategy: String,
    /// The state.
    pub words: [u64; 4],
}

/// The most decimal digits of a `u64`.
const MAX_WORD_DIGITS: usize = 20;

impl StoredRate {
    /// The stored text form: `strategy|w0|w1|w2|w3`.
    pub fn encode(&self) -> String {
        use std::fmt::Write as _;
        // Room for the longest words from the start (`format!` grows its string as it writes,
        // several times for this one); writing to a `String` cannot fail.
        let mut text = String::with_capacity(self.strategy.len() + 4 * (1 + MAX_WORD_DIGITS));
        text.push_str(&self.strategy);
        for word in self.words {
            let _ = write!(text, "|{word}");
        }
        text
    }

    /// Parses [`Self::encode`]'s form.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let strategy = parts.next()?.to_string();
        let mut words = [0u64; 4];
        for word in &mut words {
            *word = parts.next()?.parse().ok()?;
        }
        parts.next().is_none().then_some(Self { strategy, words })
    }
}

/// Why the shared state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RateStateError {
    /// The backend failed or timed out.
    #[error("rate state backend failed: {0}")]
    Backend(String),
    /// The circuit breaker is open: the backend is not asked until it has had time to recover.
    #[error("rate state backend unavailable (circuit open, retry in {retry_in_ms} ms)")]
    Open {
        /// When the breaker lets a probe through.
        retry_in_ms: u64,
    },
    /// A stored value could not be read.
    #[error("corrupt rate state: {0}")]
    Corrupt(String),
}

/// What a compare-and-set did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The new state is stored.
    Stored,
    /// The stored state was not the one expected, so nothing was written. It is this one now
    /// (`None`: absent), to decide again from.
    Lost(Option<StoredRate>),
}

/// A boxed future, so the trait can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store of rate state with compare-and-set.
pub trait SharedRateState: Send + Sync {
    /// The stored state of `key`, if any.
    fn get<'a>(&'a self, key: &'a RateKey) -> BoxFuture<'a, Result<Option<StoredRate>, RateStateError>>;

    /// Stores `new` (expiring after `ttl_ms`) if the stored state is still `expected`
    /// (`None`: absent); otherwise answers what is stored instead, in the same step.
    fn compare_and_set<'a>(
        &'a self,
        key: &'a RateKey,
        expected: Option<&'a StoredRate>,
        new: &'a StoredRate,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Swap, RateStateError>>;

    /// How long until the backend may be asked again (zero unless a breaker holds it off).
    fn retry_in(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rates_round_trip_and_garbage_is_refused() {
        let rate = StoredRate { strategy: "token-bucket".into(), words: [1, u64::MAX, 0, 42] };
        assert_eq!(rate.encode(), "token-bucket|1|18446744073709551615|0|42", "the form Redis holds");
        assert_eq!(StoredRate::decode(&rate.encode()), Some(rate));
        for bad in ["", "x", "x|1|2|3", "x|1|2|3|4|5", "x|1|2|3|-4"] {
            assert_eq!(StoredRate::decode(bad), None, "{bad}");
        }
    }
}
