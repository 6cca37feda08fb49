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

use leaky_policy_sdk::codec::{decode_u64s, encode_u64s};
use leaky_policy_sdk::params::{decode_window_config, window_config};
use leaky_policy_sdk::rate::{Guest, Usage, Verdict};

/// The fixed-window strategy.
pub struct FixedWindow;

impl Guest for FixedWindow {
    fn strategy() -> String {
        "fixed-window".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Vec<u8>, String> {
        window_config(params)
    }

    fn decide(config: Vec<u8>, state: Option<Vec<u8>>, usage: Usage) -> (Verdict, Vec<u8>) {
        let Some([capacity, window_ms]) = decode_window_config(&config) else {
            return (Verdict::exceeds_capacity(0, 0, 0), Vec::new());
        };
        let now = usage.now_ms;
        let current = now / window_ms;
        let [window, used] = state.as_deref().and_then(decode_u64s).unwrap_or([current, 0]);
        // A window later than now (a clock that went backwards) keeps counting in that window.
        let (window, used) = if window < current { (current, 0) } else { (window, used.min(capacity)) };
        let window_end = window.saturating_add(1).saturating_mul(window_ms);
        let until_next = window_end.saturating_sub(now);
        let reset = |used: u64| if used == 0 { 0 } else { until_next };
        let save = |used: u64| encode_u64s([window, used]);

        if usage.tokens > capacity {
            return (Verdict::exceeds_capacity(capacity, capacity - used, reset(used)), save(used));
        }
        let wanted = used + usage.tokens;
        if wanted <= capacity {
            (Verdict::allowed(capacity, capacity - wanted, reset(wanted)), save(wanted))
        } else {
            (Verdict::rate_limited(capacity, capacity - used, until_next, reset(used)), save(used))
        }
    }
}

leaky_policy_sdk::export_rate_limiter!(FixedWindow);
