//! The REST API, spawned for real on port 0 with a fresh SQLite file per test.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod helpers;

mod admin;
mod auth;
mod consume;
mod http2;
mod kafka;
mod operations;
mod policies;
mod policy_sync;
mod purchase;
mod recovery;
mod shared_rate;
