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

use leaky_policy_sdk::params::{decode_window_config, window_config};
use leaky_policy_sdk::rate::{Guest, Request, Verdict, Words};

/// The sliding-window strategy. Config: `(capacity, window_ms, 0, 0)`;
/// state: `(window index since the epoch, tokens in it, tokens in the window before, 0)`.
pub struct SlidingWindow;

/// The counters as seen from one instant.
struct Window {
    index: u64,
    /// Milliseconds since the current window opened.
    elapsed: u64,
    current: u64,
    previous: u64,
}

impl Window {
    fn at(now: u64, window_ms: u64, capacity: u64, state: Option<Words>) -> Self {
        let index = now / window_ms;
        let elapsed = now % window_ms;
        let (current, previous) = match state {
            // A clock that went backwards keeps counting in the newest window seen.
            Some((seen, current, previous, _)) if seen > index => {
                return Self {
                    index: seen,
                    elapsed: 0,
                    current: current.min(capacity),
                    previous: previous.min(capacity),
                };
            }
            Some((seen, current, previous, _)) if seen == index => (current, previous),
            Some((seen, current, _, _)) if seen + 1 == index => (0, current),
            _ => (0, 0),
        };
        Self { index, elapsed, current: current.min(capacity), previous: previous.min(capacity) }
    }

    /// The estimate of the last window's tokens, multiplied by the window length. At most
    /// `2 * capacity * window`, which the configuration keeps within 64 bits.
    fn scaled_estimate(&self, w: u64) -> u64 {
        self.previous * (w - self.elapsed) + self.current * w
    }

    fn words(&self) -> Words {
        (self.index, self.current, self.previous, 0)
    }
}

impl Guest for SlidingWindow {
    fn strategy() -> String {
        "sliding-window".into()
    }

    fn configure(params: Vec<(String, String)>) -> Result<Words, String> {
        window_config(params)
    }

    fn decide(config: Words, state: Option<Words>, request: Request) -> (Verdict, Words) {
        let Some((capacity, w)) = decode_window_config(config) else {
            return (Verdict::exceeds_capacity(0, 0, 0), (0, 0, 0, 0));
        };
        let mut win = Window::at(request.now_ms, w, capacity, state);
        let (cap, n) = (capacity, request.tokens);
        let remaining = |win: &Window| (cap * w).saturating_sub(win.scaled_estimate(w)) / w;
        let reset = |win: &Window| match (win.current, win.previous) {
            (0, 0) => 0,
            (0, _) => w - win.elapsed,
            _ => 2 * w - win.elapsed,
        };

        if n > cap {
            return (Verdict::exceeds_capacity(capacity, remaining(&win), reset(&win)), win.words());
        }
        if win.scaled_estimate(w) + n * w <= cap * w {
            win.current += n;
            return (Verdict::allowed(capacity, remaining(&win), reset(&win)), win.words());
        }
        let until_next = w - win.elapsed;
        let wait = if win.current + n <= cap {
            // The previous window's weight must decay until the request fits in this window.
            let slack = (cap - win.current - n) * w;
            until_next - slack.checked_div(win.previous).unwrap_or(until_next).min(until_next)
        } else {
            // Only the next window has room: wait until this window's weight there has decayed.
            until_next + (w - ((cap - n) * w).checked_div(win.current).unwrap_or(w).min(w))
        };
        (Verdict::rate_limited(capacity, remaining(&win), wait, reset(&win)), win.words())
    }
}

leaky_policy_sdk::export_rate_limiter!(SlidingWindow);
