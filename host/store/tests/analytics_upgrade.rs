//! Migration 0003 (hourly analytics totals) on a database that already holds events, on SQLite
//! and on the real PostgreSQL: the totals it builds from them answer the same reports the
//! events did, and events recorded afterwards, replayed ones included, are counted once.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use leaky_store::Database;
use leaky_store::analytics::{AnalyticsSink, Bucket, ReportQuery, SqlAnalytics, Totals};
use leaky_store::events::{Event, Outcome};
use leaky_store::schema::{Schema, migrate};
use sqlx::migrate::Migrator;
use uuid::Uuid;

const HOUR: i64 = 3_600_000;
const BASE: i64 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR);

/// Applies the migrations before 0003 from `dir` (under `migrations/`) to the database at `url`.
async fn migrate_to_version_2(url: &str, dir: &str) {
    sqlx::any::install_default_drivers();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(dir);
    let all = Migrator::new(path).await.unwrap();
    let before = Migrator {
        migrations: all.migrations.iter().filter(|m| m.version < 3).cloned().collect::<Vec<_>>().into(),
        ..Migrator::DEFAULT
    };
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    before.run(&pool).await.unwrap();
    // Events as the sink wrote them before 0003: one alice and one bob event in hour 0, two of
    // alice's in hour 1 (one refused by the rate limit).
    for (id, user, tokens, outcome, at) in [
        ("00000000-0000-7000-8000-000000000001", "alice", 5, "allowed", BASE + 10),
        ("00000000-0000-7000-8000-000000000002", "bob", 3, "allowed", BASE + 20),
        ("00000000-0000-7000-8000-000000000003", "alice", 7, "allowed", BASE + HOUR + 10),
        ("00000000-0000-7000-8000-000000000004", "alice", 9, "rate_limited", BASE + HOUR + 20),
    ] {
        let tokens: i64 = tokens;
        let user = user_id(user).to_string();
        sqlx::query(
            "INSERT INTO analytics_events (event_id, user_id, org_id, provider, model, tokens, outcome, occurred_at) \
             VALUES ($1, $2, NULL, 'openai', NULL, $3, $4, $5)",
        )
        .bind(id)
        .bind(user)
        .bind(tokens)
        .bind(outcome)
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

fn user_id(name: &str) -> Uuid {
    let id =
        if name == "alice" { "00000000-0000-4000-8000-0000000000a1" } else { "00000000-0000-4000-8000-0000000000b2" };
    id.parse().unwrap()
}

fn whole_days(user: &str) -> ReportQuery {
    ReportQuery {
        user_id: Some(user_id(user)),
        org_id: None,
        provider: None,
        from: BASE,
        to: BASE + 24 * HOUR,
        bucket_ms: HOUR,
    }
}

async fn the_totals_take_in_the_events_recorded_before(url: &str) {
    migrate(url, Schema::Migrate).await.unwrap();
    let db = Database::open_with(url, Schema::RequireCurrent).await.unwrap();
    let sink = SqlAnalytics::new(&db);

    let alice = sink.report(&whole_days("alice")).await.unwrap();
    assert_eq!(alice.totals, Totals { tokens: 12, requests: 2, rate_limited: 1, quota_rejected: 0 });
    assert_eq!(
        alice.series,
        vec![Bucket { start: BASE, tokens: 5, requests: 1 }, Bucket { start: BASE + HOUR, tokens: 7, requests: 1 }]
    );
    assert_eq!(sink.report(&whole_days("bob")).await.unwrap().totals.tokens, 3);

    // An event of before, published again, changes nothing; a new one counts once.
    let replayed = Event {
        id: "00000000-0000-7000-8000-000000000003".parse().unwrap(),
        outcome: Outcome::Allowed,
        user_id: user_id("alice"),
        org_id: None,
        provider: "openai".into(),
        model: None,
        tokens: 7,
        occurred_at: BASE + HOUR + 10,
    };
    let new = Event { id: Uuid::now_v7(), tokens: 11, occurred_at: BASE + HOUR + 30, ..replayed.clone() };
    sink.record(&[replayed, new.clone(), new]).await.unwrap();
    let alice = sink.report(&whole_days("alice")).await.unwrap();
    assert_eq!(alice.totals, Totals { tokens: 23, requests: 3, rate_limited: 1, quota_rejected: 0 });
    db.pool().close().await;
    db.readers().close().await;
}

#[tokio::test]
async fn sqlite_events_recorded_before_the_hourly_totals_are_counted_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("leaky.db").display());
    migrate_to_version_2(&format!("{url}?mode=rwc"), "sqlite").await;
    the_totals_take_in_the_events_recorded_before(&url).await;
}

#[tokio::test]
async fn postgres_events_recorded_before_the_hourly_totals_are_counted_in_them() {
    let Some((url, server, name)) = common::fresh_postgres().await else { return };
    migrate_to_version_2(&url, "postgres").await;
    the_totals_take_in_the_events_recorded_before(&url).await;
    common::drop_postgres(&server, &name).await;
}
