//! The PostgreSQL schema against the real PostgreSQL: the migrations apply to a fresh database
//! and are idempotent, a schema behind this build is refused unless migrating, and a schema
//! newer than this build is refused.
//! (Which PostgreSQL, and what happens without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use leaky_store::StoreError;
use leaky_store::schema::{Schema, migrate};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn migrations_apply_once_and_a_schema_behind_is_refused_until_migrated() {
    let Some((url, server, name)) = common::fresh_postgres().await else { return };
    let Err(StoreError::Schema(message)) = migrate(&url, Schema::RequireCurrent).await else {
        panic!("a fresh database is behind this build");
    };
    assert!(message.contains("leaky migrate"), "{message}");
    migrate(&url, Schema::Migrate).await.unwrap();
    migrate(&url, Schema::Migrate).await.expect("applying again changes nothing");
    migrate(&url, Schema::RequireCurrent).await.expect("current after migrating");

    let mut conn = PgConnection::connect(&url).await.unwrap();
    for table in ["users", "quotas", "ledger", "outbox", "purchases", "analytics_events", "policy_versions"] {
        let exists: bool = sqlx::query_scalar(&format!("SELECT to_regclass('{table}') IS NOT NULL"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(exists, "{table}");
    }
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM policy_generation WHERE id = 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(generation, 0);
    conn.close().await.unwrap();
    common::drop_postgres(&server, &name).await;
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() {
    let Some((url, server, name)) = common::fresh_postgres().await else { return };
    migrate(&url, Schema::Migrate).await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let Err(StoreError::Schema(message)) = migrate(&url, Schema::Migrate).await else {
        panic!("version 9999 is unknown to this build");
    };
    assert!(message.contains("9999"), "{message}");
    common::drop_postgres(&server, &name).await;
}
