//! Hostile components are refused at load or contained at call time with a typed error, and
//! the engine keeps serving well-behaved policies right after.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use leaky_engine::{EngineConfig, GuestError, LoadError, Outcome, PolicyEngine, RateLimiter};
use support::{engine, fixture, params, policy, production_engine, request};

/// A good limiter decides normally (the engine still works after whatever came before).
fn assert_healthy(engine: &PolicyEngine) {
    let limiter = engine.load_rate_limiter(&policy("token-bucket")).expect("loads");
    let config = limiter.configure(&params(&[("capacity", "10"), ("refill_rate_per_second", "1")])).expect("config");
    let d = limiter.decide(&config, None, request(0, 3)).expect("decides");
    assert_eq!((d.verdict.outcome, d.verdict.remaining), (Outcome::Allowed, 7));
}

/// Calls a fixture's `decide` and returns the error it must produce.
fn decide_error(engine: &PolicyEngine, name: &str) -> (RateLimiter, GuestError) {
    let limiter = engine.load_rate_limiter(&fixture(name)).expect("hostile fixture loads; it misbehaves at call time");
    let config = limiter.configure(&[]).expect("configure");
    let err = limiter.decide(&config, None, request(0, 1)).expect_err("must fail");
    // The same policy fails the same way on a fresh instance: nothing was left poisoned.
    let again = limiter.decide(&config, None, request(0, 1)).expect_err("must fail again");
    assert_eq!(std::mem::discriminant(&err), std::mem::discriminant(&again));
    (limiter, err)
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let e = production_engine();
    let (_, err) = decide_error(&e, "infinite-loop");
    assert!(matches!(err, GuestError::OutOfFuel { fuel } if fuel == EngineConfig::default().call_fuel), "{err:?}");
    assert_healthy(&e);
}

#[test]
fn an_endless_loop_with_fuel_to_spare_hits_the_wall_clock_deadline() {
    let config =
        EngineConfig { call_fuel: u64::MAX, call_timeout: Duration::from_millis(50), ..EngineConfig::default() };
    let e = PolicyEngine::new(config).expect("engine");
    let started = Instant::now();
    let (_, err) = decide_error(&e, "infinite-loop");
    assert!(matches!(err, GuestError::Timeout(limit) if limit == Duration::from_millis(50)), "{err:?}");
    // Two calls, each cut off by the epoch deadline (not a wall-time assertion on speed: a
    // generous ceiling that only an unbounded call could break).
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    let e = engine();
    let (_, err) = decide_error(&e, "memory-bomb");
    assert!(matches!(err, GuestError::MemoryLimit { limit } if limit == 16 * 1024 * 1024), "{err:?}");
    assert_healthy(&e);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let e = engine();
    let (_, err) = decide_error(&e, "deep-recursion");
    assert!(matches!(err, GuestError::StackOverflow), "{err:?}");
    assert_healthy(&e);
}

#[test]
fn a_trap_is_reported_and_discards_only_that_instance() {
    let e = engine();
    let (limiter, err) = decide_error(&e, "trap");
    assert!(matches!(err, GuestError::Trap(_)), "{err:?}");
    // `strategy` still answers on a fresh instance of the same component.
    assert_eq!(limiter.strategy(), "trap");
    assert_healthy(&e);
}

#[test]
fn a_nonsense_verdict_is_refused_by_the_host() {
    let e = engine();
    let (_, err) = decide_error(&e, "nonsense-verdict");
    assert!(matches!(&err, GuestError::InvalidAnswer(why) if why.contains("remaining")), "{err:?}");
    assert_healthy(&e);
}

#[test]
fn a_component_importing_wasi_is_refused_at_load_naming_the_import() {
    let e = engine();
    let err = e.load(&fixture("forbidden-import")).err().expect("refused");
    match &err {
        LoadError::ForbiddenImport { name, .. } => assert!(name.starts_with("wasi:"), "{name}"),
        other => panic!("expected ForbiddenImport, got {other:?}"),
    }
    assert!(err.to_string().contains("wasi:"), "the message names the import: {err}");
    assert_healthy(&e);
}

#[test]
fn garbage_core_modules_and_oversized_components_are_refused_at_load() {
    let e = engine();
    assert!(matches!(e.load(b"not wasm at all"), Err(LoadError::Invalid(_))));
    let core_module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    assert!(matches!(e.load(&core_module), Err(LoadError::CoreModule)));
    let small = PolicyEngine::new(EngineConfig { max_module_bytes: 1024, ..EngineConfig::default() }).expect("engine");
    assert!(matches!(small.load(&policy("leaky-bucket")), Err(LoadError::TooLarge { .. })));
    assert_healthy(&e);
}

#[test]
fn decisions_reuse_warm_instances() {
    let limiter = engine().load_rate_limiter(&policy("leaky-bucket")).expect("loads");
    let config = limiter.configure(&params(&[("capacity", "1000"), ("leak_rate_per_second", "1")])).expect("config");
    for i in 0..100 {
        limiter.decide(&config, None, request(i, 1)).expect("decides");
    }
    // Sequential calls never needed a second instance.
    assert_eq!(limiter.idle_instances(), 1);
}

#[test]
fn many_threads_decide_at_once_on_one_policy() {
    let limiter = Arc::new(engine().load_rate_limiter(&policy("leaky-bucket")).expect("loads"));
    let config = limiter.configure(&params(&[("capacity", "1000"), ("leak_rate_per_second", "1")])).expect("config");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (limiter, config) = (Arc::clone(&limiter), config);
            std::thread::spawn(move || {
                let mut state = None;
                for i in 0..500u64 {
                    let d = limiter.decide(&config, state, request(i, 1)).expect("decides");
                    assert_eq!(d.verdict.outcome, Outcome::Allowed, "thread {t} call {i}");
                    state = Some(d.state);
                }
                state
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("thread finished").is_some());
    }
    assert!(limiter.idle_instances() >= 1);
}
