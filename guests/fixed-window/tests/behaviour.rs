//! Fixed window semantics, natively (the engine's tests replay the same vectors through wasm).

use fixed_window::FixedWindow;
use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, assert_window_bounds, params, replay_checking_waits};
use proptest::prelude::*;

fn window(capacity: u64, seconds: u64) -> Driver<FixedWindow> {
    Driver::new(&[("capacity", &capacity.to_string()), ("window_seconds", &seconds.to_string())])
}

#[test]
fn at_most_capacity_per_epoch_aligned_window() {
    let mut w = window(100, 60);
    // 30 s into a minute: the window ends 30 s from now, wherever the first request fell.
    let start = 1_700_000_040_000; // a multiple of 60,000 plus 0
    assert_eq!(start % 60_000, 0);
    assert!(w.at(start + 30_000, 100).is_allowed());
    let v = w.at(start + 30_000, 1);
    assert_eq!((v.outcome, v.retry_after_ms, v.reset_after_ms), (Outcome::RateLimited, 30_000, 30_000));
    assert_eq!(w.at(start + 59_999, 1).outcome, Outcome::RateLimited);
    let v = w.at(start + 60_000, 100);
    assert_eq!((v.outcome, v.remaining), (Outcome::Allowed, 0));
}

#[test]
fn a_request_larger_than_capacity_is_refused_for_good() {
    assert_eq!(window(10, 1).at(0, 11).outcome, Outcome::ExceedsCapacity);
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (pairs, name) in [
        (vec![("window_seconds", "1")], "capacity"),
        (vec![("capacity", "10")], "window_seconds"),
        (vec![("capacity", "10"), ("window_seconds", "0")], "window_seconds"),
        (vec![("capacity", "10"), ("window_seconds", "1.5")], "window_seconds"),
        (vec![("capacity", "NaN"), ("window_seconds", "1")], "capacity"),
    ] {
        let err = FixedWindow::configure(params(&pairs)).expect_err("must refuse");
        assert!(err.contains(&format!("`{name}`")), "{pairs:?}: {err}");
    }
}

proptest! {
    /// Each aligned window admits at most `capacity`; any window-long interval, which straddles
    /// at most one boundary, at most twice that.
    #[test]
    fn window_bounds_hold_and_waits_are_exact(
        capacity in 1u64..300,
        seconds in 1u64..20,
        steps in prop::collection::vec((0u64..2_000, 1u64..400), 1..200),
    ) {
        let (capacity_text, seconds_text) = (capacity.to_string(), seconds.to_string());
        let pairs = [("capacity", capacity_text.as_str()), ("window_seconds", seconds_text.as_str())];
        let w = replay_checking_waits::<FixedWindow>(&pairs, capacity, &steps);
        assert_window_bounds(&w.admitted, capacity, seconds * 1000);
    }
}
