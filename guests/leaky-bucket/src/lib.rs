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
use leaky_policy_sdk::params::Params;
use leaky_policy_sdk::rate::{Guest, Request, Verdict, Words};
use leaky_policy_sdk::units::{MAX_CAPACITY, MAX_RATE_PER_SECOND, micro_per_ms, whole_tokens};

/// The leaky-bucket strategy. Config: `(capacity, leak in micro-tokens per ms, 0, 0)`;
/// state: `(level in micro-tokens, time of that level in ms, 0, 0)`.
pub struct LeakyBucket;

impl Guest for LeakyBucket {
    fn strategy() -> String {
        "leaky-bucket".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Words, String> {
        let params = Params::new(params);
        params.reject_unknown(&["capacity", "leak_rate_per_second"], &[])?;
        let capacity = params.positive_u64("capacity", MAX_CAPACITY)?;
        let rate = params.positive_f64("leak_rate_per_second", MAX_RATE_PER_SECOND)?;
        Ok((capacity, micro_per_ms("leak_rate_per_second", rate)?, 0, 0))
    }

    fn decide(config: Words, state: Option<Words>, request: Request) -> (Verdict, Words) {
        let (capacity, leak, ..) = config;
        if capacity == 0 || capacity > MAX_CAPACITY || leak == 0 {
            // Words this module did not produce: refuse rather than guess.
            return (Verdict::exceeds_capacity(0, 0, 0), (0, 0, 0, 0));
        }
        let full = capacity * MICRO;
        let now = request.now_ms;
        // A fresh subject starts empty.
        let (level, last, ..) = state.unwrap_or((0, now, 0, 0));
        // A clock that went backwards drains nothing and does not move time back.
        let at = now.max(last);
        let level = level.min(full).saturating_sub((now.saturating_sub(last)).saturating_mul(leak));
        let reset = |level: u64| level.div_ceil(leak);
        let save = |level: u64| (level, at, 0, 0);

        if request.tokens > capacity {
            return (Verdict::exceeds_capacity(capacity, whole_tokens(full - level), reset(level)), save(level));
        }
        let wanted = level + request.tokens * MICRO;
        if wanted <= full {
            (Verdict::allowed(capacity, whole_tokens(full - wanted), reset(wanted)), save(wanted))
        } else {
            let wait = (wanted - full).div_ceil(leak);
            (Verdict::rate_limited(capacity, whole_tokens(full - level), wait, reset(level)), save(level))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(LeakyBucket);
