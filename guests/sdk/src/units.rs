//! Unit conversions shared by the strategies: token rates and exact integer rounding.
//!
//! Levels are kept in micro-tokens (millionths) and rates in micro-tokens per millisecond, so a
//! rate given in tokens per second is honoured to 0.001 tokens/s and every wait the strategies
//! compute is exact integer arithmetic: no floating-point drift between "retry after" and the
//! moment the request really fits.

use alloc::format;
use alloc::string::String;

use crate::MICRO;

/// The largest capacity a strategy accepts, so `capacity * MICRO` fits in a `u64`.
pub const MAX_CAPACITY: u64 = 1_000_000_000_000;
/// The largest rate a strategy accepts, in tokens per second.
pub const MAX_RATE_PER_SECOND: f64 = 1e12;

/// Converts a rate in tokens per second to micro-tokens per millisecond (at least 1).
pub fn micro_per_ms(name: &str, per_second: f64) -> Result<u64, String> {
    let scaled = round(per_second * 1000.0);
    if scaled < 1 {
        return Err(format!("parameter `{name}` must be at least 0.001 tokens per second, got `{per_second}`"));
    }
    Ok(scaled)
}

/// Rounds a non-negative finite number to the nearest whole number (`core` has no `round`).
/// Negative input gives 0; input beyond `u64::MAX` saturates.
pub fn round(value: f64) -> u64 {
    (value + 0.5) as u64
}

/// Whole tokens in a micro-token amount, rounded down.
pub fn whole_tokens(micro: u64) -> u64 {
    micro / MICRO
}
