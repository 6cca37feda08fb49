//! Leaky bucket: the bucket's level rises by the tokens it admits and drains continuously at
//! `leak_rate_per_second`. A request that would overflow `capacity` is refused with the exact
//! wait until it fits, and that same request, retried after that wait, is admitted.
//!
//! Bound: over any interval of `t` seconds it admits at most `capacity + rate * t` tokens.
//! Parameters: `capacity` (whole tokens), `leak_rate_per_second` (tokens per second).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use leaky_policy_sdk::MICRO;
use leaky_policy_sdk::codec::{decode_u64s, encode_u64s};
use leaky_policy_sdk::params::Params;
use leaky_policy_sdk::rate::{Guest, Usage, Verdict};
use leaky_policy_sdk::units::{MAX_CAPACITY, MAX_RATE_PER_SECOND, ceil_div, micro_per_ms, ms, whole_tokens};

/// The leaky-bucket strategy.
pub struct LeakyBucket;

/// Validated parameters.
struct Config {
    capacity: u64,
    /// Micro-tokens drained per millisecond.
    leak: u64,
}

impl Config {
    fn decode(blob: &[u8]) -> Option<Self> {
        let [capacity, leak] = decode_u64s(blob)?;
        (capacity > 0 && leak > 0).then_some(Self { capacity, leak })
    }
}

impl Guest for LeakyBucket {
    fn strategy() -> String {
        "leaky-bucket".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Vec<u8>, String> {
        let params = Params::new(params);
        params.reject_unknown(&["capacity", "leak_rate_per_second"], &[])?;
        let capacity = params.positive_u64("capacity", MAX_CAPACITY)?;
        let rate = params.positive_f64("leak_rate_per_second", MAX_RATE_PER_SECOND)?;
        let leak = micro_per_ms("leak_rate_per_second", rate)?;
        Ok(encode_u64s([capacity, leak]))
    }

    fn decide(config: Vec<u8>, state: Option<Vec<u8>>, usage: Usage) -> (Verdict, Vec<u8>) {
        let Some(config) = Config::decode(&config) else {
            // A blob this module did not produce: refuse rather than guess.
            return (Verdict::exceeds_capacity(0, 0, 0), Vec::new());
        };
        let full = u128::from(config.capacity) * u128::from(MICRO);
        let leak = u128::from(config.leak);
        let now = usage.now_ms;
        // A fresh subject, or state from another strategy's layout, starts empty.
        let [level, last] = state.as_deref().and_then(decode_u64s).unwrap_or([0, now]);
        // A clock that went backwards drains nothing and does not move time back.
        let elapsed = u128::from(now.saturating_sub(last));
        let at = now.max(last);
        let level = u128::from(level).min(full).saturating_sub(elapsed * leak);
        let reset = |level: u128| ms(ceil_div(level, leak));
        let save = |level: u128| encode_u64s([u64::try_from(level).unwrap_or(u64::MAX), at]);

        if usage.tokens > config.capacity {
            let verdict = Verdict::exceeds_capacity(config.capacity, whole_tokens(full - level), reset(level));
            return (verdict, save(level));
        }
        let wanted = level + u128::from(usage.tokens) * u128::from(MICRO);
        if wanted <= full {
            (Verdict::allowed(config.capacity, whole_tokens(full - wanted), reset(wanted)), save(wanted))
        } else {
            let wait = ms(ceil_div(wanted - full, leak));
            let verdict = Verdict::rate_limited(config.capacity, whole_tokens(full - level), wait, reset(level));
            (verdict, save(level))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(LeakyBucket);
