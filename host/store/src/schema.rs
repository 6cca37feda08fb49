//! The schema version: apply the migrations this build carries, and refuse a database whose
//! schema this build does not know.

use std::collections::BTreeSet;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;

use crate::StoreError;

/// The SQLite migrations of this build.
static SQLITE: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// What to do with migrations this build carries that the database lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// Apply them (the embedded default, and `leaky migrate`).
    Migrate,
    /// Refuse to start and say to run `leaky migrate`.
    RequireCurrent,
}

async fn applied(pool: &SqlitePool) -> Result<BTreeSet<i64>, StoreError> {
    let exists: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_one(pool)
            .await?;
    if exists == 0 {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?;
    Ok(versions.into_iter().collect())
}

/// Checks the database's schema against this build's migrations, applying them if `schema`
/// says so. Refuses a schema newer than this build, and (unless migrating) one that is behind.
pub async fn ensure(pool: &SqlitePool, schema: Schema) -> Result<(), StoreError> {
    let known: BTreeSet<i64> = SQLITE.iter().map(|m| m.version).collect();
    let applied = applied(pool).await?;
    let latest = known.last().copied().unwrap_or(0);
    if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
        return Err(StoreError::Schema(format!(
            "the database has schema version {unknown}, which this build does not know (it knows up to \
             {latest}): run the release of leaky that wrote it, or a newer one"
        )));
    }
    let pending: Vec<String> = known.difference(&applied).map(i64::to_string).collect();
    if pending.is_empty() {
        return Ok(());
    }
    match schema {
        Schema::Migrate => Ok(SQLITE.run(pool).await?),
        Schema::RequireCurrent => Err(StoreError::Schema(format!(
            "the database schema is behind this build (migrations {} not applied): run `leaky migrate`",
            pending.join(", ")
        ))),
    }
}
