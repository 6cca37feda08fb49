//! Opening the database and applying migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::StoreError;
use crate::schema::Schema;

/// The database, with the schema applied: one write connection and a pool of readers.
///
/// SQLite admits one writer at a time, and a writer that finds the database locked sleeps in
/// growing steps (1, 2, 5, 10 ms, ...). Funnelling every write through one connection makes
/// writers queue in the pool instead, so the ledger's group commits never sleep behind the
/// outbox relay; readers (WAL mode) never wait for the writer.
#[derive(Clone)]
pub struct Database {
    pool: SqlitePool,
    readers: SqlitePool,
}

impl Database {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`) and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, Schema::Migrate).await
    }

    /// Opens the database at `url`, migrating it or requiring it to be current as `schema`
    /// says; a schema newer than this build is always refused.
    pub async fn open_with(url: &str, schema: Schema) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every committed transaction is on disk before anyone is answered.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        crate::schema::ensure(&pool, schema).await?;
        let readers = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
        Ok(Self { pool, readers })
    }

    /// The pool to write (and read) through: a single connection.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Read-only connections, for queries that should not wait behind writes (reports, the
    /// outbox relay's scan).
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.readers).await.is_ok()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
