//! Test helpers for rate-limit strategies, run natively: a driver that keeps state as the host
//! does (only admitted decisions are committed), and the bounds every strategy must honour.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::marker::PhantomData;

use crate::rate::{Guest, Request, Verdict, Words};

/// Drives one subject through a strategy, storing state only when a request is admitted.
pub struct Driver<G> {
    config: Words,
    state: Option<Words>,
    /// Every admitted request as `(now_ms, tokens)`.
    pub admitted: Vec<(u64, u64)>,
    strategy: PhantomData<G>,
}

/// Turns `&str` pairs into the parameter list `configure` takes.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A request of `tokens` at `now_ms`.
pub fn request(now_ms: u64, tokens: u64) -> Request {
    Request { tokens, now_ms }
}

impl<G: Guest> Driver<G> {
    /// Configures the strategy; panics with the strategy's message when it refuses.
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        let config = match G::configure(params(pairs)) {
            Ok(config) => config,
            Err(message) => panic!("configure refused {pairs:?}: {message}"),
        };
        Self { config, state: None, admitted: Vec::new(), strategy: PhantomData }
    }

    /// Decides a request at `now_ms`, committing the state when it is admitted.
    pub fn at(&mut self, now_ms: u64, tokens: u64) -> Verdict {
        let (verdict, next) = G::decide(self.config, self.state, request(now_ms, tokens));
        if verdict.is_allowed() {
            self.state = Some(next);
            self.admitted.push((now_ms, tokens));
        }
        verdict
    }
}

/// The most tokens admitted within any closed interval `[t, t + span_ms]`.
pub fn max_in_any_interval(admitted: &[(u64, u64)], span_ms: u64) -> u64 {
    (0..admitted.len())
        .map(|i| {
            let start = admitted[i].0;
            admitted[i..].iter().take_while(|(t, _)| *t <= start + span_ms).map(|(_, n)| n).sum()
        })
        .max()
        .unwrap_or(0)
}

/// Checks the bucket bound: within any interval of `t` ms at most `capacity + rate * t`
/// tokens, with `rate` in micro-tokens per millisecond. Returns the first violation.
pub fn bucket_bound_violation(admitted: &[(u64, u64)], capacity: u64, micro_per_ms: u64) -> Option<(usize, usize)> {
    for i in 0..admitted.len() {
        let mut sum: u128 = 0;
        for (j, &(t, n)) in admitted.iter().enumerate().skip(i) {
            sum += u128::from(n);
            let span = u128::from(t - admitted[i].0);
            let bound = u128::from(capacity) * 1_000_000 + span * u128::from(micro_per_ms);
            if sum * 1_000_000 > bound {
                return Some((i, j));
            }
        }
    }
    None
}

/// Replays `steps` of `(delay_ms, tokens)` through a fresh driver and checks what every
/// strategy promises: `exceeds-capacity` exactly when `tokens > capacity`, and every announced
/// wait exact (the same request fits after it, and not one millisecond before).
pub fn replay_checking_waits<G: Guest>(pairs: &[(&str, &str)], capacity: u64, steps: &[(u64, u64)]) -> Driver<G> {
    use crate::rate::Outcome;
    let mut driver = Driver::<G>::new(pairs);
    let mut now = 1_700_000_000_123;
    for &(delay, tokens) in steps {
        now += delay;
        let v = driver.at(now, tokens);
        assert_eq!(v.outcome == Outcome::ExceedsCapacity, tokens > capacity, "at {now} for {tokens}: {v:?}");
        if v.outcome == Outcome::RateLimited {
            let mut probe = Driver::<G>::new(pairs);
            for &(t, n) in &driver.admitted {
                probe.at(t, n);
            }
            let early = probe.at(now + v.retry_after_ms - 1, tokens);
            assert_eq!(early.outcome, Outcome::RateLimited, "fits before the announced wait: {v:?}");
            assert!(probe.at(now + v.retry_after_ms, tokens).is_allowed(), "does not fit after the wait: {v:?}");
        }
    }
    driver
}

/// Checks the window bounds: at most `capacity` per window aligned to the epoch, and at most
/// `2 * capacity` within any interval of one window's length.
pub fn assert_window_bounds(admitted: &[(u64, u64)], capacity: u64, window_ms: u64) {
    let mut per_window = alloc::collections::BTreeMap::new();
    for &(t, n) in admitted {
        *per_window.entry(t / window_ms).or_insert(0) += n;
    }
    assert!(per_window.values().all(|&n| n <= capacity), "a window admitted more than {capacity}: {per_window:?}");
    let worst = max_in_any_interval(admitted, window_ms - 1);
    assert!(worst <= 2 * capacity, "{worst} tokens within one window length");
}
