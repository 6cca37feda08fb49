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
use leaky_policy_sdk::params::Params;
use leaky_policy_sdk::rate::{Guest, Request, Verdict, Words};
use leaky_policy_sdk::units::{MAX_CAPACITY, MAX_RATE_PER_SECOND, micro_per_ms, whole_tokens};

/// The token-bucket strategy. Config: `(capacity, refill in micro-tokens per ms, 0, 0)`;
/// state: `(tokens available in micro-tokens, time of that count in ms, 0, 0)`.
pub struct TokenBucket;

impl Guest for TokenBucket {
    fn strategy() -> String {
        "token-bucket".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Words, String> {
        let params = Params::new(params);
        params.reject_unknown(&["capacity", "refill_rate_per_second"], &[])?;
        let capacity = params.positive_u64("capacity", MAX_CAPACITY)?;
        let rate = params.positive_f64("refill_rate_per_second", MAX_RATE_PER_SECOND)?;
        Ok((capacity, micro_per_ms("refill_rate_per_second", rate)?, 0, 0))
    }

    fn decide(config: Words, state: Option<Words>, request: Request) -> (Verdict, Words) {
        let (capacity, refill, ..) = config;
        if capacity == 0 || capacity > MAX_CAPACITY || refill == 0 {
            return (Verdict::exceeds_capacity(0, 0, 0), (0, 0, 0, 0));
        }
        let full = capacity * MICRO;
        let now = request.now_ms;
        // A fresh subject starts full.
        let (tokens, last, ..) = state.unwrap_or((full, now, 0, 0));
        let at = now.max(last);
        let available = tokens.saturating_add(now.saturating_sub(last).saturating_mul(refill)).min(full);
        let reset = |available: u64| (full - available).div_ceil(refill);
        let save = |available: u64| (available, at, 0, 0);

        if request.tokens > capacity {
            let verdict = Verdict::exceeds_capacity(capacity, whole_tokens(available), reset(available));
            return (verdict, save(available));
        }
        let wanted = request.tokens * MICRO;
        if wanted <= available {
            let left = available - wanted;
            (Verdict::allowed(capacity, whole_tokens(left), reset(left)), save(left))
        } else {
            let wait = (wanted - available).div_ceil(refill);
            (Verdict::rate_limited(capacity, whole_tokens(available), wait, reset(available)), save(available))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(TokenBucket);
