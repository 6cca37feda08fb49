//! Sliding window semantics, natively (the engine's tests replay the same vectors through wasm).

use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, max_in_any_interval, params};
use proptest::prelude::*;
use sliding_window::SlidingWindow;

fn window(capacity: u64, seconds: u64) -> Driver<SlidingWindow> {
    Driver::new(&[("capacity", &capacity.to_string()), ("window_seconds", &seconds.to_string())])
}

#[test]
fn the_previous_window_weighs_in_as_it_slides_away() {
    let mut w = window(100, 10);
    assert!(w.at(9_000, 100).is_allowed());
    // 2 s into the next window the previous one still weighs 80%: room for 20 tokens.
    let v = w.at(12_000, 30);
    assert_eq!(v.outcome, Outcome::RateLimited);
    assert_eq!(v.remaining, 20);
    // 30 tokens fit once the previous weight is 70%: at 13 s.
    assert_eq!(v.retry_after_ms, 1_000);
    assert_eq!(w.at(12_999, 30).outcome, Outcome::RateLimited);
    assert!(w.at(13_000, 30).is_allowed());
}

#[test]
fn a_full_current_window_waits_into_the_next() {
    let mut w = window(100, 10);
    assert!(w.at(0, 100).is_allowed());
    let v = w.at(5_000, 50);
    // In the next window the 100 just spent weigh 100% and decay: 50 fit after half of it.
    assert_eq!(v.retry_after_ms, 5_000 + 5_000);
    assert!(w.at(15_000, 50).is_allowed());
}

#[test]
fn a_request_larger_than_capacity_is_refused_for_good() {
    assert_eq!(window(10, 1).at(0, 11).outcome, Outcome::ExceedsCapacity);
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (pairs, name) in [
        (vec![("window_seconds", "1")], "capacity"),
        (vec![("capacity", "10"), ("window_seconds", "-5")], "window_seconds"),
        (vec![("capacity", "10"), ("window_seconds", "inf")], "window_seconds"),
    ] {
        let err = SlidingWindow::configure(params(&pairs)).expect_err("must refuse");
        assert!(err.contains(&format!("`{name}`")), "{pairs:?}: {err}");
    }
}

proptest! {
    #[test]
    fn bounded_per_window_and_across_boundaries_and_waits_are_exact(
        capacity in 1u64..300,
        seconds in 1u64..20,
        steps in prop::collection::vec((0u64..2_000, 1u64..400), 1..200),
    ) {
        let mut w = window(capacity, seconds);
        let mut now = 1_700_000_000_123;
        for (dt, tokens) in steps {
            now += dt;
            let v = w.at(now, tokens);
            prop_assert_eq!(v.outcome == Outcome::ExceedsCapacity, tokens > capacity);
            if v.outcome == Outcome::RateLimited {
                let mut probe = window(capacity, seconds);
                for &(t, n) in &w.admitted { probe.at(t, n); }
                prop_assert_eq!(probe.at(now + v.retry_after_ms - 1, tokens).outcome, Outcome::RateLimited);
                prop_assert!(probe.at(now + v.retry_after_ms, tokens).is_allowed());
            }
        }
        let span = seconds * 1000;
        let mut per_window = std::collections::BTreeMap::new();
        for &(t, n) in &w.admitted { *per_window.entry(t / span).or_insert(0) += n; }
        prop_assert!(per_window.values().all(|&n| n <= capacity));
        prop_assert!(max_in_any_interval(&w.admitted, span - 1) <= 2 * capacity);
    }
}
