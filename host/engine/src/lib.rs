//! The Leaky Tokens policy engine: runs rate-limit and quota-rule policies that are sandboxed
//! WebAssembly components (see `wit/policy.wit`).
//!
//! - [`PolicyEngine::load`] compiles a component once (precompiled artifacts are cached on
//!   disk by the component's sha256 and the engine's compatibility hash), refuses one that
//!   imports anything (the host links nothing: no environment, files, network or clock) or
//!   exports no known world, and returns a [`Policy`].
//! - Calls run on warm instances: a decision never instantiates, except to replace an instance
//!   that misbehaved. Every call has a fuel budget and an epoch deadline; every instance a
//!   memory cap.
//! - Guests are not trusted: every verdict is checked before the host acts on it, and each way a
//!   guest can misbehave is a typed [`GuestError`].

mod bindings;
mod cache;
mod config;
mod engine;
mod error;
mod inspect;
mod pool;
mod quota_rule;
mod rate_limiter;
mod sandbox;

pub use bindings::{Charge, Outcome, Request, Usage, Verdict, Words};
pub use config::EngineConfig;
pub use engine::{Policy, PolicyEngine};
pub use error::{GuestError, LoadError};
pub use inspect::{ComponentInfo, PolicyKind, sha256_hex};
pub use quota_rule::{QuotaRule, QuotaRuleConfig};
pub use rate_limiter::{Decision, RateLimiter, RateLimiterConfig};
