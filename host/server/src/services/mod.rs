//! The service layer: what the routes call. No HTTP types below this line.

pub mod accounts;
pub mod api_keys;
pub mod consume;
pub mod counters;
pub mod login_limiter;
pub mod policies;
pub mod reserve;
pub mod saga;
pub mod shared_rate;
