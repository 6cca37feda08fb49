//! The PostgreSQL pool against the real PostgreSQL: a connection that sat idle is checked before
//! use, so one the server dropped meanwhile is replaced instead of failing the next statement.
//! (Which PostgreSQL, and what happens without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn connections_the_server_dropped_while_idle_are_replaced_before_use() {
    let Some(t) = common::postgres().await else { return };
    let one: i64 = sqlx::query_scalar("SELECT 1::bigint").fetch_one(t.db.pool()).await.unwrap();
    assert_eq!(one, 1);
    tokio::time::sleep(leaky_store::CHECK_IDLE_CONNECTIONS_AFTER + std::time::Duration::from_millis(200)).await;

    // The server drops every connection of the pool, as a restart would.
    let mut admin = PgConnection::connect(&t.url).await.unwrap();
    let dropped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(dropped >= 1, "the pool held a connection");
    admin.close().await.unwrap();

    let two: i64 = sqlx::query_scalar("SELECT 2::bigint")
        .fetch_one(t.db.pool())
        .await
        .expect("the dropped connection is replaced before the statement runs");
    assert_eq!(two, 2);
    t.finish().await;
}
