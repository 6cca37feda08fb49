//! Decision cost of each strategy, natively and through the engine on a warm instance.
//!
//! Run with `cargo xtask bench`; results and the machine they came from are in
//! docs/09-performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use leaky_engine::{EngineConfig, PolicyEngine, Request};
use leaky_policy_sdk::rate::Guest;
use std::hint::black_box;
use std::path::PathBuf;

fn component(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../../policies")
            .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests`", path.display()))
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Benchmarks one strategy both ways; state is carried from call to call as the host does.
fn strategy<G: Guest>(c: &mut Criterion, engine: &PolicyEngine, name: &str, pairs: &[(&str, &str)]) {
    let mut group = c.benchmark_group(name);
    let native_config = G::configure(params(pairs)).expect("configure");
    let mut now = 1_700_000_000_000u64;
    let mut state = None;
    group.bench_function("native", |b| {
        b.iter(|| {
            now += 1;
            let (verdict, next) =
                G::decide(native_config, state, leaky_policy_sdk::rate::Request { tokens: 1, now_ms: now });
            state = Some(next);
            black_box(verdict)
        })
    });

    let limiter = engine.load_rate_limiter(&component(name)).expect("component loads");
    let config = limiter.configure(&params(pairs)).expect("configure");
    let mut request = Request { tokens: 1, now_ms: now };
    let mut state = None;
    group.bench_function("engine", |b| {
        b.iter(|| {
            request.now_ms += 1;
            let decision = limiter.decide(&config, state, request).expect("decides");
            state = Some(decision.state);
            black_box(decision.verdict)
        })
    });
    group.finish();
}

fn decide(c: &mut Criterion) {
    let engine = PolicyEngine::new(EngineConfig::default()).expect("engine");
    let bucket = [("capacity", "1000000"), ("leak_rate_per_second", "1000")];
    strategy::<leaky_bucket::LeakyBucket>(c, &engine, "leaky-bucket", &bucket);
    let token = [("capacity", "1000000"), ("refill_rate_per_second", "1000")];
    strategy::<token_bucket::TokenBucket>(c, &engine, "token-bucket", &token);
    let window = [("capacity", "1000000"), ("window_seconds", "60")];
    strategy::<fixed_window::FixedWindow>(c, &engine, "fixed-window", &window);
    strategy::<sliding_window::SlidingWindow>(c, &engine, "sliding-window", &window);
}

criterion_group!(benches, decide);
criterion_main!(benches);
