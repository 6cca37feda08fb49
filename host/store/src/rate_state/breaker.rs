//! A circuit breaker: after `failures` consecutive failures the backend is not asked for
//! `cooldown`; then one probe is let through, and a success closes the circuit again.
//!
//! Failures are counted as the backend's, not as calls': every call out when the backend falls
//! silent fails at the same moment, and under load hundreds are out. So a failed call that was
//! already out when the last failure was counted, or when the circuit opened, adds nothing. Two
//! calls one after the other that both fail count twice. Before, a single 50 ms stall of a
//! healthy Redis under load failed enough calls at once to open the circuit for a second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
        /// When the last failure was counted.
        counted: Option<Instant>,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; everyone else waits for its answer.
    HalfOpen {
        since: Instant,
    },
}

/// The breaker. Cheap to consult.
#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
    failures: u32,
    cooldown: Duration,
    name: &'static str,
}

/// What the breaker says about a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    /// Make the call.
    Go,
    /// Do not; the circuit is open for this much longer.
    Wait(Duration),
}

impl CircuitBreaker {
    /// Opens after `failures` consecutive failures, for `cooldown`. `name` labels its metrics.
    pub fn new(name: &'static str, failures: u32, cooldown: Duration) -> Self {
        metrics::gauge!("leaky_breaker_open", "backend" => name).set(0.0);
        Self {
            state: Mutex::new(State::Closed { failures: 0, counted: None }),
            failures: failures.max(1),
            cooldown,
            name,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go ahead now.
    pub fn permit(&self) -> Permit {
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                Permit::Go
            }
            State::Open { until } => Permit::Wait(until - now),
            // A probe that never reported back (its task was dropped) does not wedge the circuit.
            State::HalfOpen { since } if now >= since + self.cooldown => {
                *state = State::HalfOpen { since: now };
                Permit::Go
            }
            State::HalfOpen { since } => Permit::Wait(since + self.cooldown - now),
        }
    }

    /// How long until a call may go ahead, without changing anything (zero when closed).
    pub fn retry_in(&self) -> Duration {
        let now = Instant::now();
        match *self.state() {
            State::Closed { .. } => Duration::ZERO,
            State::Open { until } => until.saturating_duration_since(now),
            State::HalfOpen { since } => (since + self.cooldown).saturating_duration_since(now),
        }
    }

    /// A call succeeded.
    pub fn success(&self) {
        let mut state = self.state();
        if !matches!(*state, State::Closed { failures: 0, .. }) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!(backend = self.name, "backend answers again: circuit closed");
                metrics::gauge!("leaky_breaker_open", "backend" => self.name).set(0.0);
            }
            *state = State::Closed { failures: 0, counted: None };
        }
    }

    /// A call that was made at `started` failed.
    pub fn failure(&self, started: Instant, reason: &dyn std::fmt::Display) {
        let mut state = self.state();
        let failures = match *state {
            // It was out when the last failure was counted: it failed with it.
            State::Closed { counted: Some(counted), .. } if started <= counted => return,
            State::Closed { failures, .. } => failures + 1,
            // It was out when the circuit opened, or before the probe went out.
            State::Open { until } if started + self.cooldown <= until => return,
            State::HalfOpen { since } if started < since => return,
            State::Open { .. } | State::HalfOpen { .. } => self.failures,
        };
        let now = Instant::now();
        if failures >= self.failures {
            if matches!(*state, State::Closed { .. }) {
                tracing::error!(backend = self.name, %reason, cooldown = ?self.cooldown, "backend failing: circuit opened");
                metrics::counter!("leaky_breaker_trips_total", "backend" => self.name).increment(1);
                metrics::gauge!("leaky_breaker_open", "backend" => self.name).set(1.0);
            }
            *state = State::Open { until: now + self.cooldown };
        } else {
            *state = State::Closed { failures, counted: Some(now) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_after_the_cooldown_and_closes_on_success() {
        let breaker = CircuitBreaker::new("test", 3, Duration::from_millis(30));
        breaker.failure(Instant::now(), &"x");
        breaker.failure(Instant::now(), &"x");
        breaker.success();
        breaker.failure(Instant::now(), &"x");
        breaker.failure(Instant::now(), &"x");
        assert_eq!(breaker.permit(), Permit::Go, "a success resets the count");
        breaker.failure(Instant::now(), &"x");
        assert!(matches!(breaker.permit(), Permit::Wait(_)), "three in a row open it");
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(breaker.permit(), Permit::Go, "one probe after the cooldown");
        assert!(matches!(breaker.permit(), Permit::Wait(_)), "only one");
        breaker.failure(Instant::now(), &"x");
        assert!(matches!(breaker.permit(), Permit::Wait(_)), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(breaker.permit(), Permit::Go);
        breaker.success();
        assert_eq!(breaker.permit(), Permit::Go);
        assert_eq!(breaker.permit(), Permit::Go, "closed again");
    }

    #[test]
    fn calls_out_together_when_the_backend_fails_count_once() {
        let breaker = CircuitBreaker::new("test", 3, Duration::from_millis(30));
        let together = Instant::now();
        for _ in 0..100 {
            breaker.failure(together, &"silent");
        }
        assert_eq!(breaker.permit(), Permit::Go, "a hundred calls out at one stall are one failure");
        breaker.failure(Instant::now(), &"silent");
        assert_eq!(breaker.permit(), Permit::Go, "a call made after it is a second");
        breaker.failure(together, &"silent");
        assert_eq!(breaker.permit(), Permit::Go, "a call older than the last one counted adds nothing");
        breaker.failure(Instant::now(), &"silent");
        assert!(matches!(breaker.permit(), Permit::Wait(_)), "the third in a row opens it");
        let open = breaker.retry_in();
        std::thread::sleep(Duration::from_millis(5));
        breaker.failure(together, &"late");
        assert!(breaker.retry_in() < open, "a call out before it opened does not hold it open");
    }
}
