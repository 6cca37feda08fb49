//! Fixed window semantics, natively (the engine's tests replay the same vectors through wasm).

use fixed_window::FixedWindow;
use leaky_policy_sdk::rate::{Guest, Outcome};
use leaky_policy_sdk::testing::{Driver, max_in_any_interval, params};
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
    fn never_more_than_capacity_per_window_nor_twice_that_across_a_boundary(
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
                prop_assert_eq!((now + v.retry_after_ms) % (seconds * 1000), 0, "waits until a window opens");
            }
        }
        let span = seconds * 1000;
        let mut per_window = std::collections::BTreeMap::new();
        for &(t, n) in &w.admitted { *per_window.entry(t / span).or_insert(0) += n; }
        prop_assert!(per_window.values().all(|&n| n <= capacity));
        prop_assert!(max_in_any_interval(&w.admitted, span - 1) <= 2 * capacity);
    }
}
