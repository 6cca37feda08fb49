//! Shared helpers of the engine's integration tests: where the built components are.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use leaky_engine::{EngineConfig, PolicyEngine, Request, Usage};

fn workspace() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..")
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {}: {e}. Build the components first: `cargo xtask guests`", path.display())
    })
}

/// A built policy component from `policies/`.
pub fn policy(name: &str) -> Vec<u8> {
    read(workspace().join("policies").join(format!("{name}.wasm")))
}

/// A built hostile fixture from `guests/fixtures/wasm/`.
pub fn fixture(name: &str) -> Vec<u8> {
    read(workspace().join("guests/fixtures/wasm").join(format!("{name}.wasm")))
}

/// An engine with the default limits, no compile cache, and a wall-clock deadline far beyond
/// any honest call. Fuel bounds a guest's work whatever the machine's load, but the wall-clock
/// backstop is what a starved thread on a busy test machine can outlast, turning the failure a
/// test expects (a memory cap, a stack overflow) into a timeout; the deadline's own tests set
/// theirs.
pub fn engine() -> PolicyEngine {
    PolicyEngine::new(EngineConfig { call_timeout: Duration::from_secs(10), ..EngineConfig::default() })
        .expect("engine starts")
}

/// An engine with every default limit, the call deadline included.
pub fn production_engine() -> PolicyEngine {
    PolicyEngine::new(EngineConfig::default()).expect("engine starts")
}

/// Owned parameter pairs.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A rate-limit request of `tokens` at `now_ms`.
pub fn request(now_ms: u64, tokens: u64) -> Request {
    Request { tokens, now_ms }
}

/// A quota-rule request of `tokens` at `now_ms`.
pub fn usage(now_ms: u64, tokens: u64) -> Usage {
    Usage { subject: "user-1".into(), provider: "openai".into(), model: None, tokens, now_ms }
}
