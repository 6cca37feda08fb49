//! Sliding window semantics, natively (the engine's tests replay the same vectors through wasm).

use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, assert_window_bounds, params, replay_checking_waits};
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
    /// Bounded per window and across boundaries; every wait is exact.
    #[test]
    fn window_bounds_hold_and_waits_are_exact(
        capacity in 1u64..300,
        seconds in 1u64..20,
        steps in prop::collection::vec((0u64..2_000, 1u64..400), 1..200),
    ) {
        let (capacity_text, seconds_text) = (capacity.to_string(), seconds.to_string());
        let pairs = [("capacity", capacity_text.as_str()), ("window_seconds", seconds_text.as_str())];
        let w = replay_checking_waits::<SlidingWindow>(&pairs, capacity, &steps);
        assert_window_bounds(&w.admitted, capacity, seconds * 1000);
    }
}
