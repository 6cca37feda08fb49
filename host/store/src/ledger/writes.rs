//! Where a group commit's statements go.
//!
//! On a database the commit has to read before it writes ([`Arbiter::Database`]), each
//! statement runs at once, in the transaction. When nothing has to be read back (SQLite, where
//! the process's account book decided: [`Arbiter::Caller`]), the statements are collected into
//! one script that runs as one transaction in a single round trip to SQLite's worker thread:
//! `BEGIN IMMEDIATE`, the writes, the last `seq` written, `COMMIT`. Under load a round trip
//! costs two thread wake-ups on a busy machine, and a commit written statement by statement
//! spent more time in them than in SQLite.
//!
//! [`Arbiter::Database`]: super::Arbiter::Database
//! [`Arbiter::Caller`]: super::Arbiter::Caller

use sqlx::{AnyConnection, Executor, Row};

use crate::sql::Sql;
use crate::{Backend, Pool, StoreError};

/// The statements of a commit: run one by one, or collected into a script.
pub(super) enum Writes<'c, 'q> {
    /// Each statement runs at once on `conn` (inside the caller's transaction).
    Each {
        /// The transaction's connection.
        conn: &'c mut AnyConnection,
        /// Its database.
        backend: Backend,
    },
    /// Statements are appended to one SQLite script, which [`run_script`] runs.
    Script(Sql<'q>),
}

impl<'q> Writes<'_, 'q> {
    /// A script for SQLite, opening its transaction.
    pub(super) fn script() -> Self {
        Self::Script(Sql::new(Backend::Sqlite, "BEGIN IMMEDIATE"))
    }

    /// The script, if the statements were collected into one.
    pub(super) fn into_script(self) -> Option<Sql<'q>> {
        match self {
            Self::Script(script) => Some(script),
            Self::Each { .. } => None,
        }
    }

    /// The database the statements are for.
    pub(super) fn backend(&self) -> Backend {
        match self {
            Self::Each { backend, .. } => *backend,
            Self::Script(_) => Backend::Sqlite,
        }
    }

    /// Adds the statement `build` writes: runs it at once, or appends it to the script.
    pub(super) async fn statement(&mut self, build: impl FnOnce(&mut Sql<'q>)) -> Result<(), StoreError> {
        match self {
            Self::Each { conn, backend } => {
                let mut sql = Sql::new(*backend, "");
                build(&mut sql);
                sql.execute(&mut **conn).await?;
            }
            Self::Script(sql) => {
                sql.push("; ");
                build(sql);
            }
        }
        Ok(())
    }
}

/// Runs `script` (from [`Writes::script`]) on the SQLite writer and commits it; returns the row
/// id of the last row it inserted. A script that fails part-way is rolled back, so it wrote
/// nothing.
pub(super) async fn run_script(pool: &Pool, mut script: Sql<'_>) -> Result<i64, StoreError> {
    script.push("; SELECT last_insert_rowid() AS last; COMMIT");
    let mut conn = pool.acquire().await?;
    match script.fetch_all(&mut *conn).await {
        Ok(rows) => {
            let last = rows.last().ok_or_else(|| StoreError::Corrupt("the commit script returned no row".into()))?;
            Ok(last.try_get("last")?)
        }
        Err(err) => {
            // The transaction may be open (a write failed after BEGIN) or already gone; either
            // way the connection goes back to the pool outside one.
            if let Err(rollback) = conn.execute("ROLLBACK").await {
                tracing::debug!(error = %rollback, "nothing to roll back after a failed commit script");
            }
            Err(err)
        }
    }
}
