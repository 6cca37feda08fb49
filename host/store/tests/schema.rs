//! The schema guard: migrations are applied or required, and a schema newer than this build is
//! refused with a message that says what to do.
#![allow(clippy::unwrap_used)]

use leaky_store::schema::Schema;
use leaky_store::{Database, StoreError};

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("leaky.db").display())
}

#[tokio::test]
async fn a_database_behind_this_build_is_refused_until_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let Err(StoreError::Schema(message)) = Database::open_with(&url(&dir), Schema::RequireCurrent).await else {
        panic!("a fresh database is behind this build");
    };
    assert!(message.contains("leaky migrate"), "{message}");
    Database::open(&url(&dir)).await.unwrap();
    Database::open_with(&url(&dir), Schema::RequireCurrent).await.expect("current after migrating");
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_even_when_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&url(&dir)).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         VALUES (9999, 'from the future', CURRENT_TIMESTAMP, TRUE, X'00', 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    drop(db);
    for schema in [Schema::Migrate, Schema::RequireCurrent] {
        let Err(StoreError::Schema(message)) = Database::open_with(&url(&dir), schema).await else {
            panic!("version 9999 is unknown to this build");
        };
        assert!(message.contains("9999") && message.contains("does not know"), "{message}");
    }
}
