//! The host side of the WIT contract: the crate's only `bindgen!`.
//!
//! It binds the `host` world, which exports every policy interface; each loaded component is
//! then checked for the one interface it implements.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "leaky:policy/host",
    additional_derives: [PartialEq],
});

pub use exports::leaky::policy::quota::{self as quota_api, Charge};
pub use exports::leaky::policy::rate_limiter::{self as rate_api, Request};
pub use leaky::policy::types::{Outcome, Usage, Verdict, Words};

/// The exported interface a rate-limit component implements.
pub const RATE_LIMITER_INTERFACE: &str = "leaky:policy/rate-limiter@0.1.0";
/// The exported interface a quota-rule component implements.
pub const QUOTA_INTERFACE: &str = "leaky:policy/quota@0.1.0";
