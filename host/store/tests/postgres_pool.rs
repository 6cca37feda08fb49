//! The PostgreSQL pool against the real PostgreSQL: a connection that sat idle is checked before
//! use, so one the server dropped meanwhile is replaced instead of failing the next statement;
//! and the relay's commits, which need not wait for the disk, leave every connection of the pool
//! committing durably. (Which PostgreSQL, and what happens without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{debit, user};
use leaky_store::bus::InProcessBus;
use leaky_store::commit_feed::CommitFeed;
use leaky_store::ledger::{Arbiter, LedgerWriter, WRITEBACK_EVERY};
use leaky_store::outbox;
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

/// The relay moves its cursor without waiting for the disk (a crash publishes those events
/// again), in its own transaction only: afterwards every connection of the pool, the ledger
/// writer's included, still commits durably.
#[tokio::test]
async fn the_relay_s_commits_without_waiting_for_the_disk_leave_the_pool_durable() {
    let Some(t) = common::postgres().await else { return };
    let writer =
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let spender = user(&t.db, "spender").await;
    for _ in 0..3 {
        writer.debit(debit(spender, None, 1_000)).await.unwrap();
    }
    let bus = InProcessBus::new(Vec::new());
    let mut relayed = 0;
    for _ in 0..4 {
        relayed += outbox::relay_once(&t.db, &bus).await.unwrap();
    }
    assert_eq!(relayed, 3);
    assert_eq!(outbox::pending(t.db.pool()).await.unwrap(), 0);

    // Hold every connection the pool has open at once and ask each.
    let open = t.db.pool().size() as usize;
    let mut held = Vec::new();
    for _ in 0..open {
        held.push(t.db.pool().acquire().await.unwrap());
    }
    for conn in &mut held {
        let setting: String =
            sqlx::query_scalar("SELECT current_setting('synchronous_commit')").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(setting, "on", "a connection the relay used commits durably again");
    }
    drop(held);
    t.finish().await;
}
