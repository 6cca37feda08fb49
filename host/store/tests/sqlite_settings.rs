//! The settings every SQLite connection is opened with: what makes an answered consume durable,
//! and where each kind of connection keeps its temporary storage.
#![allow(clippy::unwrap_used)]

use leaky_store::Database;

async fn pragma(pool: &leaky_store::Pool, name: &str) -> i64 {
    let value: String =
        sqlx::query_scalar(&format!("SELECT CAST({name} AS TEXT) FROM pragma_{name}")).fetch_one(pool).await.unwrap();
    value.parse().unwrap()
}

#[tokio::test]
async fn the_writer_commits_to_disk_and_keeps_statement_journals_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&format!("sqlite://{}", dir.path().join("leaky.db").display())).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(db.pool()).await.unwrap();
    assert_eq!(mode, "wal");
    // FULL: every commit is on disk before it returns.
    assert_eq!(pragma(db.pool(), "synchronous").await, 2);
    // MEMORY: a group commit's statement journal never goes through a temporary file.
    assert_eq!(pragma(db.pool(), "temp_store").await, 2);
    assert_eq!(pragma(db.pool(), "foreign_keys").await, 1);

    // The readers answer reports, whose sorts may be large: SQLite's default, temporary files
    // once a sort outgrows the cache.
    assert_eq!(pragma(db.readers(), "temp_store").await, 0);
    assert_eq!(pragma(db.readers(), "synchronous").await, 2);
    let refused = sqlx::query("CREATE TABLE nope (id INTEGER)").execute(db.readers()).await;
    assert!(refused.is_err(), "a reader wrote");
}
