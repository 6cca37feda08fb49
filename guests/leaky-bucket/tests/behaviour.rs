//! Leaky bucket semantics, natively (the engine's tests replay the same vectors through wasm).

use leaky_bucket::LeakyBucket;
use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, bucket_bound_violation, params, replay_checking_waits};
use proptest::prelude::*;

fn bucket(capacity: u64, rate: &str) -> Driver<LeakyBucket> {
    Driver::new(&[("capacity", &capacity.to_string()), ("leak_rate_per_second", rate)])
}

#[test]
fn fills_by_admitted_tokens_and_refuses_overflow_with_the_exact_wait() {
    let mut b = bucket(100, "10");
    let v = b.at(0, 80);
    assert_eq!((v.outcome, v.remaining, v.reset_after_ms), (Outcome::Allowed, 20, 8_000));
    // 80 + 30 = 110 > 100: 10 tokens must leak first, which takes 1 s at 10/s.
    let v = b.at(0, 30);
    assert_eq!((v.outcome, v.retry_after_ms, v.remaining), (Outcome::RateLimited, 1_000, 20));
    // One millisecond early is still too early; exactly on time fits.
    assert_eq!(b.at(999, 30).outcome, Outcome::RateLimited);
    let v = b.at(1_000, 30);
    assert_eq!((v.outcome, v.remaining), (Outcome::Allowed, 0));
}

#[test]
fn drains_continuously_with_fractional_rates() {
    let mut b = bucket(10, "0.5");
    assert!(b.at(0, 10).is_allowed());
    let v = b.at(0, 1);
    assert_eq!(v.retry_after_ms, 2_000, "one token leaks in 2 s at 0.5/s");
    assert!(b.at(2_000, 1).is_allowed());
}

#[test]
fn a_request_larger_than_capacity_is_refused_for_good() {
    let mut b = bucket(100, "10");
    let v = b.at(0, 101);
    assert_eq!((v.outcome, v.retry_after_ms, v.remaining), (Outcome::ExceedsCapacity, 0, 100));
    assert!(b.at(0, 100).is_allowed(), "the refusal spent nothing");
}

#[test]
fn a_clock_that_goes_backwards_drains_nothing() {
    let mut b = bucket(10, "1");
    assert!(b.at(10_000, 10).is_allowed());
    assert_eq!(b.at(5_000, 1).outcome, Outcome::RateLimited);
    assert!(b.at(11_000, 1).is_allowed());
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (pairs, name) in [
        (vec![("leak_rate_per_second", "1")], "capacity"),
        (vec![("capacity", "10")], "leak_rate_per_second"),
        (vec![("capacity", "-1"), ("leak_rate_per_second", "1")], "capacity"),
        (vec![("capacity", "10"), ("leak_rate_per_second", "NaN")], "leak_rate_per_second"),
        (vec![("capacity", "10"), ("leak_rate_per_second", "0")], "leak_rate_per_second"),
        (vec![("capacity", "10"), ("leak_rate_per_second", "-2")], "leak_rate_per_second"),
        (vec![("capacity", "10"), ("leak_rate_per_second", "1"), ("burst", "3")], "burst"),
    ] {
        let err = LeakyBucket::configure(params(&pairs)).expect_err("must refuse");
        assert!(err.contains(&format!("`{name}`")), "{pairs:?}: {err}");
    }
}

proptest! {
    #[test]
    fn never_admits_more_than_capacity_plus_rate_times_t_and_waits_are_exact(
        capacity in 1u64..500,
        rate_milli in 1u64..50_000,
        steps in prop::collection::vec((0u64..3_000, 1u64..600), 1..150),
    ) {
        let (capacity_text, rate) = (capacity.to_string(), format!("{}", rate_milli as f64 / 1000.0));
        let pairs = [("capacity", capacity_text.as_str()), ("leak_rate_per_second", rate.as_str())];
        let b = replay_checking_waits::<LeakyBucket>(&pairs, capacity, &steps);
        prop_assert_eq!(bucket_bound_violation(&b.admitted, capacity, rate_milli), None);
    }
}
