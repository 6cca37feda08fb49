//! Leaky Tokens persistence, on SQLite by default (a file in the data directory) or on a
//! PostgreSQL server that replicas share; the repositories are written once for both
//! ([`sql`] builds statements both accept).
//!
//! - [`Database`] opens the pool (on SQLite: WAL, full sync, foreign keys) and applies the
//!   migrations.
//! - Repositories, one concern each: [`users`], [`api_keys`], [`orgs`], [`quotas`],
//!   [`purchases`] (with saga steps, payments and idempotency keys), [`policies`] (component
//!   versions, activations and bindings).
//! - [`ledger`]: the group-commit writer. Debits and their outbox events are written in one
//!   transaction, many requests per transaction, and a caller is answered only after its
//!   transaction committed.
//! - [`outbox`] relays committed events to an [`bus::EventBus`] at least once (on SQLite, as
//!   the writer hands them over in a [`commit_feed::CommitFeed`] when it can); the
//!   [`analytics`] sink deduplicates them by event id.

pub mod advisory_locks;
pub mod analytics;
pub mod api_keys;
pub mod bus;
pub mod cassandra;
pub mod commit_feed;
mod database;
mod error;
pub mod events;
pub mod kafka;
pub mod ledger;
pub mod orgs;
pub mod outbox;
mod pg_array;
pub mod policies;
pub mod purchases;
pub mod quotas;
pub mod rate_state;
mod runtime;
pub mod schema;
pub mod sql;
pub mod users;
pub mod writer_claim;

pub use database::{Backend, CHECK_IDLE_CONNECTIONS_AFTER, Database, Pool, begin, now_ms};
pub use error::StoreError;
