//! Token bucket: starts full with `capacity` tokens, refills continuously at
//! `refill_rate_per_second` up to `capacity`, and admits a request when the bucket holds enough
//! tokens, so bursts up to `capacity` pass at once. A refusal carries the exact wait.
//!
//! Bound: over any interval of `t` seconds it admits at most `capacity + rate * t` tokens.
//! Parameters: `capacity` (whole tokens), `refill_rate_per_second` (tokens per second).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use leaky_policy_sdk::MICRO;
use leaky_policy_sdk::codec::{decode_u64s, encode_u64s};
use leaky_policy_sdk::params::Params;
use leaky_policy_sdk::rate::{Guest, Usage, Verdict};
use leaky_policy_sdk::units::{MAX_CAPACITY, MAX_RATE_PER_SECOND, ceil_div, micro_per_ms, ms, whole_tokens};

/// The token-bucket strategy.
pub struct TokenBucket;

struct Config {
    capacity: u64,
    /// Micro-tokens added per millisecond.
    refill: u64,
}

impl Config {
    fn decode(blob: &[u8]) -> Option<Self> {
        let [capacity, refill] = decode_u64s(blob)?;
        (capacity > 0 && refill > 0).then_some(Self { capacity, refill })
    }
}

impl Guest for TokenBucket {
    fn strategy() -> String {
        "token-bucket".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Vec<u8>, String> {
        let params = Params::new(params);
        params.reject_unknown(&["capacity", "refill_rate_per_second"], &[])?;
        let capacity = params.positive_u64("capacity", MAX_CAPACITY)?;
        let rate = params.positive_f64("refill_rate_per_second", MAX_RATE_PER_SECOND)?;
        let refill = micro_per_ms("refill_rate_per_second", rate)?;
        Ok(encode_u64s([capacity, refill]))
    }

    fn decide(config: Vec<u8>, state: Option<Vec<u8>>, usage: Usage) -> (Verdict, Vec<u8>) {
        let Some(config) = Config::decode(&config) else {
            return (Verdict::exceeds_capacity(0, 0, 0), Vec::new());
        };
        let full = u128::from(config.capacity) * u128::from(MICRO);
        let refill = u128::from(config.refill);
        let now = usage.now_ms;
        let [tokens, last] = state.as_deref().and_then(decode_u64s).unwrap_or([u64::MAX, now]);
        let elapsed = u128::from(now.saturating_sub(last));
        let at = now.max(last);
        let available = u128::from(tokens).saturating_add(elapsed * refill).min(full);
        let reset = |available: u128| ms(ceil_div(full - available, refill));
        let save = |available: u128| encode_u64s([u64::try_from(available).unwrap_or(u64::MAX), at]);

        if usage.tokens > config.capacity {
            let verdict = Verdict::exceeds_capacity(config.capacity, whole_tokens(available), reset(available));
            return (verdict, save(available));
        }
        let wanted = u128::from(usage.tokens) * u128::from(MICRO);
        if wanted <= available {
            let left = available - wanted;
            (Verdict::allowed(config.capacity, whole_tokens(left), reset(left)), save(left))
        } else {
            let wait = ms(ceil_div(wanted - available, refill));
            let verdict = Verdict::rate_limited(config.capacity, whole_tokens(available), wait, reset(available));
            (verdict, save(available))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(TokenBucket);
