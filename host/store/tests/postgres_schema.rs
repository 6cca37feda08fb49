//! The PostgreSQL schema against the real PostgreSQL: the migrations apply to a fresh database
//! and are idempotent, a schema behind this build is refused unless migrating, and a schema
//! newer than this build is refused.
//!
//! PostgreSQL is `LEAKY_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each test creates a database of its own there and drops it after. Without PostgreSQL the
//! tests fail, unless `LEAKY_TEST_POSTGRES=absent` declares it absent; then they say they skipped.
#![allow(clippy::unwrap_used)]

use leaky_store::StoreError;
use leaky_store::schema::{Schema, migrate_postgres};
use sqlx::{Connection, PgConnection};

/// A fresh database: `(its URL, the server URL to drop it through, its name)`.
async fn fresh_database() -> Option<(String, String, String)> {
    if std::env::var("LEAKY_TEST_POSTGRES").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_POSTGRES=absent declares PostgreSQL absent");
        return None;
    }
    let server = std::env::var("LEAKY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {server}: {e} (start it, or set LEAKY_TEST_POSTGRES=absent to skip)")
    });
    let name = format!("leaky_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, _) = server.rsplit_once('/').expect("a URL ending in /database");
    Some((format!("{base}/{name}"), server, name))
}

async fn drop_database(server: &str, name: &str) {
    let mut admin = PgConnection::connect(server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}

#[tokio::test]
async fn migrations_apply_once_and_a_schema_behind_is_refused_until_migrated() {
    let Some((url, server, name)) = fresh_database().await else { return };
    let Err(StoreError::Schema(message)) = migrate_postgres(&url, Schema::RequireCurrent).await else {
        panic!("a fresh database is behind this build");
    };
    assert!(message.contains("leaky migrate"), "{message}");
    migrate_postgres(&url, Schema::Migrate).await.unwrap();
    migrate_postgres(&url, Schema::Migrate).await.expect("applying again changes nothing");
    migrate_postgres(&url, Schema::RequireCurrent).await.expect("current after migrating");

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
    drop_database(&server, &name).await;
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() {
    let Some((url, server, name)) = fresh_database().await else { return };
    migrate_postgres(&url, Schema::Migrate).await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let Err(StoreError::Schema(message)) = migrate_postgres(&url, Schema::Migrate).await else {
        panic!("version 9999 is unknown to this build");
    };
    assert!(message.contains("9999"), "{message}");
    drop_database(&server, &name).await;
}
