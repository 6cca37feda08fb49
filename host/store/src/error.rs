//! Store errors.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value (username, email, org name, ...) is taken.
    #[error("{0} is already taken")]
    Conflict(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The analytics store failed.
    #[error("analytics store: {0}")]
    Analytics(String),
    /// The event bus failed (the relay retries the batch).
    #[error("event bus: {0}")]
    Bus(String),
    /// The database's schema is not the one this build expects.
    #[error("{0}")]
    Schema(String),
    /// The group commit holding this write failed; nothing of it was stored.
    #[error("the ledger could not commit: {0}")]
    CommitFailed(String),
    /// The ledger writer has stopped (the process is shutting down).
    #[error("the ledger writer has stopped")]
    WriterGone,
    /// Another process serves the embedded database ([`crate::writer_claim`]).
    #[error("{0}")]
    InUse(String),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`] naming `what`.
    pub(crate) fn unique(err: sqlx::Error, what: &'static str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(what),
            _ => Self::Database(err),
        }
    }
}
