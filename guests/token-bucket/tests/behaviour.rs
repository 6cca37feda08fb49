//! Token bucket semantics, natively (the engine's tests replay the same vectors through wasm).

use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, bucket_bound_violation, params, replay_checking_waits};
use proptest::prelude::*;
use token_bucket::TokenBucket;

fn bucket(capacity: u64, rate: &str) -> Driver<TokenBucket> {
    Driver::new(&[("capacity", &capacity.to_string()), ("refill_rate_per_second", rate)])
}

#[test]
fn starts_full_and_allows_a_burst_up_to_capacity() {
    let mut b = bucket(100, "10");
    let v = b.at(0, 100);
    assert_eq!((v.outcome, v.remaining, v.reset_after_ms), (Outcome::Allowed, 0, 10_000));
    let v = b.at(0, 5);
    assert_eq!((v.outcome, v.retry_after_ms), (Outcome::RateLimited, 500));
    assert_eq!(b.at(499, 5).outcome, Outcome::RateLimited);
    assert!(b.at(500, 5).is_allowed());
}

#[test]
fn refills_continuously_but_never_past_capacity() {
    let mut b = bucket(10, "1");
    assert!(b.at(0, 10).is_allowed());
    // An hour later the bucket holds 10, not 3,600.
    assert!(b.at(3_600_000, 10).is_allowed());
    assert_eq!(b.at(3_600_000, 1).outcome, Outcome::RateLimited);
}

#[test]
fn a_request_larger_than_capacity_is_refused_for_good() {
    let v = bucket(50, "5").at(0, 51);
    assert_eq!((v.outcome, v.retry_after_ms), (Outcome::ExceedsCapacity, 0));
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (pairs, name) in [
        (vec![("refill_rate_per_second", "1")], "capacity"),
        (vec![("capacity", "0"), ("refill_rate_per_second", "1")], "capacity"),
        (vec![("capacity", "10")], "refill_rate_per_second"),
        (vec![("capacity", "10"), ("refill_rate_per_second", "nan")], "refill_rate_per_second"),
        (vec![("capacity", "10"), ("refill_rate_per_second", "0")], "refill_rate_per_second"),
        (vec![("capacity", "10"), ("refill_rate_per_second", "0.0000001")], "refill_rate_per_second"),
    ] {
        let err = TokenBucket::configure(params(&pairs)).expect_err("must refuse");
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
        let pairs = [("capacity", capacity_text.as_str()), ("refill_rate_per_second", rate.as_str())];
        let b = replay_checking_waits::<TokenBucket>(&pairs, capacity, &steps);
        prop_assert_eq!(bucket_bound_violation(&b.admitted, capacity, rate_milli), None);
    }
}
