//! Sliding window, weighted two-window approximation (the approach of Cloudflare and nginx):
//! the tokens spent in the last `window_seconds` are estimated as
//! `previous * (1 - elapsed / window) + current`, where `current` counts the tokens of the
//! window (aligned to the Unix epoch) that holds now, `previous` those of the window before,
//! and `elapsed` how far now is into the current window. A request is admitted when the
//! estimate plus its tokens stays within `capacity`. The state is three integers per subject,
//! however busy the subject is; an exact sliding log would need one entry per request.
//!
//! Bound: each aligned window admits at most `capacity` (as a fixed window does), and any
//! interval of one window's length admits at most `2 * capacity`, approached only when traffic
//! bunches at the end of one window and the weight of that window has decayed. Unlike a fixed
//! window, a burst at the end of a window leaves little room at the start of the next.
//! All arithmetic is exact: the estimate is compared scaled by the window length.
//! Parameters: `capacity` (whole tokens), `window_seconds` (whole seconds).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use leaky_policy_sdk::codec::{decode_u64s, encode_u64s};
use leaky_policy_sdk::params::{decode_window_config, window_config};
use leaky_policy_sdk::rate::{Guest, Usage, Verdict};
use leaky_policy_sdk::units::ms;

/// The sliding-window strategy.
pub struct SlidingWindow;

/// The counters as seen from one instant.
struct Window {
    index: u64,
    /// Milliseconds since the current window opened.
    elapsed: u128,
    current: u128,
    previous: u128,
}

impl Window {
    fn at(now: u64, window_ms: u64, state: Option<[u64; 3]>) -> Self {
        let index = now / window_ms;
        let elapsed = u128::from(now % window_ms);
        match state {
            // A clock that went backwards keeps counting in the newest window seen.
            Some([seen, current, previous]) if seen > index => {
                Self { index: seen, elapsed: 0, current: current.into(), previous: previous.into() }
            }
            Some([seen, current, previous]) if seen == index => {
                Self { index, elapsed, current: current.into(), previous: previous.into() }
            }
            Some([seen, current, _]) if seen + 1 == index => {
                Self { index, elapsed, current: 0, previous: current.into() }
            }
            _ => Self { index, elapsed, current: 0, previous: 0 },
        }
    }

    /// The estimate of the last window's tokens, multiplied by the window length.
    fn scaled_estimate(&self, w: u128) -> u128 {
        self.previous * (w - self.elapsed) + self.current * w
    }

    fn encode(&self) -> Vec<u8> {
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        encode_u64s([self.index, clamp(self.current), clamp(self.previous)])
    }
}

impl Guest for SlidingWindow {
    fn strategy() -> String {
        "sliding-window".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Vec<u8>, String> {
        window_config(params)
    }

    fn decide(config: Vec<u8>, state: Option<Vec<u8>>, usage: Usage) -> (Verdict, Vec<u8>) {
        let Some([capacity, window_ms]) = decode_window_config(&config) else {
            return (Verdict::exceeds_capacity(0, 0, 0), Vec::new());
        };
        let mut win = Window::at(usage.now_ms, window_ms, state.as_deref().and_then(decode_u64s));
        let (cap, w, n) = (u128::from(capacity), u128::from(window_ms), u128::from(usage.tokens));
        let remaining = |win: &Window| ms((cap * w).saturating_sub(win.scaled_estimate(w)) / w);
        let reset = |win: &Window| match (win.current, win.previous) {
            (0, 0) => 0,
            (0, _) => ms(w - win.elapsed),
            _ => ms(2 * w - win.elapsed),
        };

        if n > cap {
            return (Verdict::exceeds_capacity(capacity, remaining(&win), reset(&win)), win.encode());
        }
        if win.scaled_estimate(w) + n * w <= cap * w {
            win.current += n;
            return (Verdict::allowed(capacity, remaining(&win), reset(&win)), win.encode());
        }
        let until_next = w - win.elapsed;
        let wait = if win.current + n <= cap {
            // The previous window's weight must decay until the request fits in this window.
            let slack = (cap - win.current - n) * w;
            until_next - slack.checked_div(win.previous).unwrap_or(until_next).min(until_next)
        } else {
            // Only the next window has room: wait until this window's weight there has decayed.
            let into_next = w - ((cap - n) * w).checked_div(win.current).unwrap_or(w).min(w);
            until_next + into_next
        };
        (Verdict::rate_limited(capacity, remaining(&win), ms(wait), reset(&win)), win.encode())
    }
}

leaky_policy_sdk::export_rate_limiter!(SlidingWindow);
