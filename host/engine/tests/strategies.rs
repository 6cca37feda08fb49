//! The strategies through the engine agree with the same code run natively, decision for
//! decision: the component is the native logic, compiled to wasm and sandboxed.

mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use leaky_engine::{Outcome, RateLimiter, RateLimiterConfig, Verdict};
use leaky_policy_sdk::rate::Guest;
use proptest::prelude::*;
use support::{engine, params, policy, request, usage};

/// Native verdicts in the SDK's types, for comparison with the engine's.
fn native_fields(v: &leaky_policy_sdk::rate::Verdict) -> (bool, u64, u64, u64, u64) {
    (v.is_allowed(), v.limit, v.remaining, v.retry_after_ms, v.reset_after_ms)
}

fn engine_fields(v: &Verdict) -> (bool, u64, u64, u64, u64) {
    (v.outcome == Outcome::Allowed, v.limit, v.remaining, v.retry_after_ms, v.reset_after_ms)
}

/// Replays `steps` both ways, committing state only on admission, and compares every verdict.
fn differential<G: Guest>(
    limiter: &RateLimiter,
    config: &RateLimiterConfig,
    pairs: &[(&str, &str)],
    steps: &[(u64, u64)],
) {
    let native_config = G::configure(params(pairs)).expect("native configure");
    assert_eq!(limiter.configure(&params(pairs)).expect("configure"), *config);
    let mut state = None;
    let mut now = 1_700_000_000_000u64;
    for &(dt, tokens) in steps {
        now += dt;
        let (nv, ns) = G::decide(native_config, state, leaky_policy_sdk::rate::Request { tokens, now_ms: now });
        let decision = limiter.decide(config, state, request(now, tokens)).expect("engine decides");
        assert_eq!(native_fields(&nv), engine_fields(&decision.verdict), "at {now} for {tokens}");
        assert_eq!(ns, decision.state);
        if nv.is_allowed() {
            state = Some(ns);
        }
    }
}

/// Loads a strategy once per test binary: compiling is the slow part, deciding is not.
fn load(name: &str) -> RateLimiter {
    static LOADED: Mutex<BTreeMap<String, RateLimiter>> = Mutex::new(BTreeMap::new());
    let mut loaded = LOADED.lock().expect("not poisoned");
    loaded
        .entry(name.to_string())
        .or_insert_with(|| engine().load_rate_limiter(&policy(name)).expect("component loads"))
        .clone()
}

const BUCKET: &[(&str, &str)] = &[("capacity", "100"), ("leak_rate_per_second", "10")];
const TOKEN: &[(&str, &str)] = &[("capacity", "100"), ("refill_rate_per_second", "10")];
const WINDOW: &[(&str, &str)] = &[("capacity", "100"), ("window_seconds", "10")];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn leaky_bucket_matches_native(steps in prop::collection::vec((0u64..3_000, 1u64..150), 1..80)) {
        let limiter = load("leaky-bucket");
        let config = limiter.configure(&params(BUCKET)).expect("configure");
        differential::<leaky_bucket::LeakyBucket>(&limiter, &config, BUCKET, &steps);
    }

    #[test]
    fn token_bucket_matches_native(steps in prop::collection::vec((0u64..3_000, 1u64..150), 1..80)) {
        let limiter = load("token-bucket");
        let config = limiter.configure(&params(TOKEN)).expect("configure");
        differential::<token_bucket::TokenBucket>(&limiter, &config, TOKEN, &steps);
    }

    #[test]
    fn fixed_window_matches_native(steps in prop::collection::vec((0u64..3_000, 1u64..150), 1..80)) {
        let limiter = load("fixed-window");
        let config = limiter.configure(&params(WINDOW)).expect("configure");
        differential::<fixed_window::FixedWindow>(&limiter, &config, WINDOW, &steps);
    }

    #[test]
    fn sliding_window_matches_native(steps in prop::collection::vec((0u64..3_000, 1u64..150), 1..80)) {
        let limiter = load("sliding-window");
        let config = limiter.configure(&params(WINDOW)).expect("configure");
        differential::<sliding_window::SlidingWindow>(&limiter, &config, WINDOW, &steps);
    }
}

#[test]
fn leaky_bucket_retry_after_is_exact_through_the_engine() {
    let limiter = load("leaky-bucket");
    assert_eq!(limiter.strategy(), "leaky-bucket");
    let config = limiter.configure(&params(BUCKET)).expect("configure");
    let first = limiter.decide(&config, None, request(0, 80)).expect("decide");
    let refused = limiter.decide(&config, Some(first.state), request(0, 30)).expect("decide");
    assert_eq!((refused.verdict.outcome, refused.verdict.retry_after_ms), (Outcome::RateLimited, 1_000));
    let retried = limiter.decide(&config, Some(first.state), request(1_000, 30)).expect("decide");
    assert_eq!(retried.verdict.outcome, Outcome::Allowed);
    let too_big = limiter.decide(&config, None, request(0, 101)).expect("decide");
    assert_eq!(too_big.verdict.outcome, Outcome::ExceedsCapacity);
}

#[test]
fn configure_errors_name_the_parameter_through_the_engine() {
    for name in ["leaky-bucket", "token-bucket", "fixed-window", "sliding-window"] {
        let limiter = load(name);
        let err = limiter.configure(&params(&[("capacity", "NaN")])).expect_err("refused").to_string();
        assert!(err.contains("`capacity`"), "{name}: {err}");
    }
}

#[test]
fn model_pricing_prices_through_the_engine() {
    let rule = engine().load_quota_rule(&policy("model-pricing")).expect("loads");
    let config = rule.configure(&params(&[("model.gpt-4*", "2"), ("deny", "o1")])).expect("configure");
    let mut u = usage(0, 100);
    u.model = Some("gpt-4o".into());
    assert_eq!(rule.price(&config, &u).expect("price"), leaky_engine::Charge::Cost(200));
    u.model = Some("o1".into());
    assert!(matches!(rule.price(&config, &u).expect("price"), leaky_engine::Charge::Deny(_)));
    let err = rule.configure(&params(&[("model.x", "-1")])).expect_err("refused").to_string();
    assert!(err.contains("`model.x`"), "{err}");
}

#[test]
fn a_component_of_the_other_world_is_refused_by_the_typed_loaders() {
    let e = engine();
    assert!(e.load_quota_rule(&policy("leaky-bucket")).is_err());
    assert!(e.load_rate_limiter(&policy("model-pricing")).is_err());
}
