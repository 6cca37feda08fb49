//! The PostgreSQL schema against the real PostgreSQL: the migrations apply to a fresh database
//! and are idempotent, a schema behind this build is refused unless migrating, and a schema
//! newer than this build is refused; migration 0008 keeps the ledger rows it re-keys, and 0009
//! the outbox rows it lets a commit pack.
//! (Which PostgreSQL, and what happens without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use leaky_store::StoreError;
use leaky_store::schema::{Schema, migrate};
use sqlx::migrate::Migrator;
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

/// Migration 0008 on a ledger that already holds rows: they stay, keyed by their entry id,
/// `seq` is gone, and the quota rows' pages keep a tenth free.
#[tokio::test]
async fn migration_8_keeps_the_ledger_rows_and_keys_them_by_entry_id() {
    let Some((url, server, name)) = common::fresh_postgres().await else { return };
    let mut conn = migrated_before(&url, 8).await;
    let entries = ["0190d3f0-0000-7000-8000-000000000001", "0190d3f0-0000-7000-8000-000000000002"];
    for (entry, kind, tokens) in [(entries[0], "consume", 5_i64), (entries[1], "purchase", 100)] {
        sqlx::query(
            "INSERT INTO ledger (entry_id, kind, user_id, provider, tokens, created_at) \
             VALUES ($1, $2, 'someone', 'openai', $3, 1)",
        )
        .bind(entry)
        .bind(kind)
        .bind(tokens)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    migrate(&url, Schema::Migrate).await.unwrap();

    let mut conn = PgConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT entry_id, kind, tokens FROM ledger ORDER BY entry_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(entries[0].to_string(), "consume".to_string(), 5), (entries[1].to_string(), "purchase".to_string(), 100)]
    );
    let key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'ledger'::regclass AND i.indisprimary",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(key, ["entry_id"]);
    let seq: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'ledger' AND column_name = 'seq'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(seq, 0, "seq is dropped");
    let again = sqlx::query(
        "INSERT INTO ledger (entry_id, kind, user_id, provider, tokens, created_at) \
         VALUES ($1, 'consume', 'someone', 'openai', 1, 2)",
    )
    .bind(entries[0])
    .execute(&mut conn)
    .await;
    let Err(sqlx::Error::Database(err)) = again else { panic!("an entry id is written once: {again:?}") };
    assert_eq!(err.code().as_deref(), Some("23505"), "{err}");
    let options: Vec<String> = sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE relname = 'quotas'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(options, ["fillfactor=90"]);
    conn.close().await.unwrap();
    common::drop_postgres(&server, &name).await;
}

/// Migration 0009 on a version-8 database whose outbox holds events not yet relayed: they stay,
/// each counted as one event, and a row is either one event (with its id, topic and key) or a
/// packed commit (with none of them); the packed lines are compressed with lz4 where the server
/// has it.
#[tokio::test]
async fn migration_9_keeps_the_outbox_rows_as_one_event_each() {
    let Some((url, server, name)) = common::fresh_postgres().await else { return };
    let mut conn = migrated_before(&url, 9).await;
    let ids = ["0190d3f0-0000-7000-8000-000000000001", "0190d3f0-0000-7000-8000-000000000002"];
    for id in ids {
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, key, payload, created_at) VALUES ($1, 'leaky.usage.v1', 'someone', '{}', 1)",
        )
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    migrate(&url, Schema::Migrate).await.unwrap();

    let db = leaky_store::Database::open(&url).await.unwrap();
    let stored = leaky_store::outbox::stored(db.pool()).await.unwrap();
    let stored: Vec<(String, &str)> = stored.iter().map(|e| (e.id.to_string(), e.key.as_str())).collect();
    assert_eq!(stored, [(ids[0].to_string(), "someone"), (ids[1].to_string(), "someone")]);
    assert_eq!(leaky_store::outbox::pending(db.pool()).await.unwrap(), 2);
    db.pool().close().await;

    let mut conn = PgConnection::connect(&url).await.unwrap();
    for (event_id, key, events) in [(None, Some("someone"), 1), (Some(ids[0]), Some("someone"), 2), (None, None, 0)] {
        let refused = sqlx::query(
            "INSERT INTO outbox (event_id, topic, key, payload, events, created_at) \
             VALUES ($1, CASE WHEN $1 IS NULL THEN NULL ELSE 'leaky.usage.v1' END, $2, '', $3, 1)",
        )
        .bind(event_id)
        .bind(key)
        .bind(events)
        .execute(&mut conn)
        .await;
        let Err(sqlx::Error::Database(err)) = refused else { panic!("{event_id:?} {key:?} {events}: {refused:?}") };
        assert_eq!(err.code().as_deref(), Some("23514"), "{err}");
    }
    let lz4: bool =
        sqlx::query_scalar("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let compression: String = sqlx::query_scalar(
        "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'payload'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(compression, if lz4 { "l" } else { "" });
    conn.close().await.unwrap();
    common::drop_postgres(&server, &name).await;
}

/// A connection to the database at `url`, migrated to the version before `version`.
async fn migrated_before(url: &str, version: i64) -> PgConnection {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/postgres");
    let all = Migrator::new(path).await.unwrap();
    let before = Migrator {
        migrations: all.migrations.iter().filter(|m| m.version < version).cloned().collect::<Vec<_>>().into(),
        ..Migrator::DEFAULT
    };
    let mut conn = PgConnection::connect(url).await.unwrap();
    before.run(&mut conn).await.unwrap();
    conn
}
