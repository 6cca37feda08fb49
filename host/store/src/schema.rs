//! The schema version: apply the migrations this build carries, and refuse a database whose
//! schema this build does not know. SQLite and PostgreSQL carry the same versions
//! (`migrations/sqlite`, `migrations/postgres`).

use std::collections::BTreeSet;

use sqlx::migrate::Migrator;

use crate::database::{Backend, Pool};
use crate::{Database, StoreError};

/// The SQLite migrations of this build.
static SQLITE: Migrator = sqlx::migrate!("../../migrations/sqlite");
/// The PostgreSQL migrations of this build.
static POSTGRES: Migrator = sqlx::migrate!("../../migrations/postgres");

/// What to do with migrations this build carries that the database lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// Apply them (the embedded default, and `leaky migrate`).
    Migrate,
    /// Refuse to start and say to run `leaky migrate`.
    RequireCurrent,
}

/// Whether `applied` can be brought to `migrator`'s versions: `Ok(true)` when migrations are
/// pending and `schema` says to apply them, `Ok(false)` when the schema is current.
fn check(migrator: &Migrator, applied: &BTreeSet<i64>, schema: Schema) -> Result<bool, StoreError> {
    let known: BTreeSet<i64> = migrator.iter().map(|m| m.version).collect();
    let latest = known.last().copied().unwrap_or(0);
    if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
        return Err(StoreError::Schema(format!(
            "the database has schema version {unknown}, which this build does not know (it knows up to \
             {latest}): run the release of leaky that wrote it, or a newer one"
        )));
    }
    let pending: Vec<String> = known.difference(applied).map(i64::to_string).collect();
    match (pending.is_empty(), schema) {
        (true, _) => Ok(false),
        (false, Schema::Migrate) => Ok(true),
        (false, Schema::RequireCurrent) => Err(StoreError::Schema(format!(
            "the database schema is behind this build (migrations {} not applied): run `leaky migrate`",
            pending.join(", ")
        ))),
    }
}

/// Checks the database's schema, applying this build's migrations for `backend` if `schema`
/// says so.
pub async fn ensure(pool: &Pool, backend: Backend, schema: Schema) -> Result<(), StoreError> {
    let (migrator, exists) = match backend {
        Backend::Sqlite => {
            (&SQLITE, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
        }
        Backend::Postgres => (&POSTGRES, "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations'"),
    };
    let exists: i64 = sqlx::query_scalar(exists).fetch_one(pool).await?;
    let applied: Vec<i64> = if exists == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?
    };
    if check(migrator, &applied.into_iter().collect(), schema)? {
        migrator.run(pool).await?;
    }
    Ok(())
}

/// Connects to the database at `url` (either backend) and checks (or migrates) its schema,
/// for `leaky migrate`.
pub async fn migrate(url: &str, schema: Schema) -> Result<(), StoreError> {
    let db = Database::open_with(url, schema).await?;
    db.pool().close().await;
    db.readers().close().await;
    Ok(())
}
