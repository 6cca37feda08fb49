//! Fixed window: at most `capacity` tokens per window of `window_seconds`, windows aligned to
//! the Unix epoch (so every replica and every restart agrees on where a window starts).
//! A refusal waits until the next window opens.
//!
//! Bound: each aligned window admits at most `capacity`; an interval that straddles a boundary
//! can admit up to `2 * capacity` (the end of one window plus the start of the next).
//! Parameters: `capacity` (whole tokens), `window_seconds` (whole seconds).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use leaky_policy_sdk::params::{decode_window_config, window_config};
use leaky_policy_sdk::rate::{Guest, Request, Verdict, Words};

/// The fixed-window strategy. Config: `(capacity, window_ms, 0, 0)`;
/// state: `(window index since the epoch, tokens used in it, 0, 0)`.
pub struct FixedWindow;

impl Guest for FixedWindow {
    fn strategy() -> String {
        "fixed-window".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Words, String> {
        window_config(params)
    }

    fn decide(config: Words, state: Option<Words>, request: Request) -> (Verdict, Words) {
        let Some((capacity, window_ms)) = decode_window_config(config) else {
            return (Verdict::exceeds_capacity(0, 0, 0), (0, 0, 0, 0));
        };
        let now = request.now_ms;
        let current = now / window_ms;
        let (window, used, ..) = state.unwrap_or((current, 0, 0, 0));
        // A window later than now (a clock that went backwards) keeps counting in that window.
        let (window, used) = if window < current { (current, 0) } else { (window, used.min(capacity)) };
        let until_next = window.saturating_add(1).saturating_mul(window_ms).saturating_sub(now);
        let reset = |used: u64| if used == 0 { 0 } else { until_next };
        let save = |used: u64| (window, used, 0, 0);

        if request.tokens > capacity {
            return (Verdict::exceeds_capacity(capacity, capacity - used, reset(used)), save(used));
        }
        let wanted = used + request.tokens;
        if wanted <= capacity {
            (Verdict::allowed(capacity, capacity - wanted, reset(wanted)), save(wanted))
        } else {
            (Verdict::rate_limited(capacity, capacity - used, until_next, reset(used)), save(used))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(FixedWindow);
