//! Bindings of the `rate-limit-policy` world and helpers for building verdicts.

/// The generated bindings; use the re-exports below.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rate-limit-policy",
        pub_export_macro: true,
        export_macro_name: "__export_rate_limit_policy",
        default_bindings_module: "::leaky_policy_sdk::rate::bindings",
        runtime_path: "::leaky_policy_sdk::__wit_bindgen::rt",
        additional_derives: [PartialEq],
    });
}

pub use bindings::exports::leaky::policy::rate_limiter::{Guest, Request};
pub use bindings::leaky::policy::types::{Outcome, Verdict, Words};

/// Exports a type implementing [`Guest`] as this component's rate limiter.
/// Natively (for tests) it expands to nothing.
#[macro_export]
macro_rules! export_rate_limiter {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::rate::bindings::__export_rate_limit_policy!($ty);
    };
}

impl Verdict {
    /// An admitted request.
    pub fn allowed(limit: u64, remaining: u64, reset_after_ms: u64) -> Self {
        Self { outcome: Outcome::Allowed, limit, remaining, retry_after_ms: 0, reset_after_ms }
    }

    /// A request that fits after `retry_after_ms`.
    pub fn rate_limited(limit: u64, remaining: u64, retry_after_ms: u64, reset_after_ms: u64) -> Self {
        Self { outcome: Outcome::RateLimited, limit, remaining, retry_after_ms, reset_after_ms }
    }

    /// A request larger than `limit`: it can never be admitted.
    pub fn exceeds_capacity(limit: u64, remaining: u64, reset_after_ms: u64) -> Self {
        Self { outcome: Outcome::ExceedsCapacity, limit, remaining, retry_after_ms: 0, reset_after_ms }
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }
}
