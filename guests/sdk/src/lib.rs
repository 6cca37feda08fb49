//! The Leaky Tokens policy SDK: everything a guest needs to be a policy component.
//!
//! A policy is a pure function. It imports nothing from the host, so it cannot read files,
//! the network, the environment or a clock: the host passes `now-ms` in. Guests are `no_std`
//! by default; on `wasm32` this crate supplies their allocator and panic handler, so a built
//! component imports nothing at all.
//!
//! Enable the feature of the world you implement (`rate-limiter` or `quota-rule`), implement
//! the world's `Guest` trait in plain Rust (it compiles natively too, so the same test vectors
//! run natively and through the host's engine), and export it:
//!
//! ```ignore
//! use leaky_policy_sdk::rate::{Guest, Usage, Verdict};
//! struct MyLimiter;
//! impl Guest for MyLimiter { /* strategy, configure, decide */ }
//! leaky_policy_sdk::export_rate_limiter!(MyLimiter);
//! ```
//!
//! The WIT contract lives in `wit/policy.wit`; this crate holds the only `generate!` of it.
#![cfg_attr(not(test), no_std)]

extern crate alloc;
// The generated bindings name their runtime by this crate's public path.
extern crate self as leaky_policy_sdk;

pub mod codec;
pub mod params;
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
mod runtime;
pub mod units;

#[cfg(feature = "quota-rule")]
pub mod quota;
#[cfg(feature = "rate-limiter")]
pub mod rate;
#[cfg(all(feature = "rate-limiter", feature = "testing"))]
pub mod testing;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Tokens are accounted in millionths inside the strategies, so fractional rates stay exact.
pub const MICRO: u64 = 1_000_000;
