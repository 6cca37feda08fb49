//! The hourly totals, rolled up from the events (migrations 0005 on SQLite, 0006 on
//! PostgreSQL), on both databases: a report counts every event recorded before it, each once,
//! whether or not a roll-up ran in between, the process stopped, events were replayed, or
//! recording and rolling up (twice at once, as two replicas would) ran at the same time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::TestDb;
use leaky_store::Database;
use leaky_store::analytics::{AnalyticsSink, ReportQuery, SqlAnalytics, Totals, rollup};
use leaky_store::events::{Event, Outcome};
use uuid::Uuid;

const HOUR: i64 = 3_600_000;
const BASE: i64 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR);

fn event(user: Uuid, tokens: u64, at: i64) -> Event {
    Event {
        id: Uuid::now_v7(),
        outcome: Outcome::Allowed,
        user_id: user,
        org_id: None,
        provider: "openai".into(),
        model: None,
        tokens,
        occurred_at: at,
    }
}

/// Whole days from `BASE`: read from the hourly totals only.
fn whole_days(user: Option<Uuid>) -> ReportQuery {
    ReportQuery { user_id: user, org_id: None, provider: None, from: BASE, to: BASE + 24 * HOUR, bucket_ms: HOUR }
}

async fn hourly_requests(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) FROM analytics_hourly")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

on_both_databases!(
    a_report_counts_the_events_recorded_since_the_last_roll_up,
    each_event_is_rolled_up_once_whatever_is_replayed_or_rolled_up_again,
    events_a_stopped_process_did_not_roll_up_are_counted_after_it,
    recording_while_rolling_up_counts_every_event_once,
);

async fn a_report_counts_the_events_recorded_since_the_last_roll_up(test: &TestDb) {
    let sink = SqlAnalytics::new(&test.db);
    let alice = Uuid::now_v7();
    sink.record(&[event(alice, 5, BASE + 10), event(alice, 7, BASE + HOUR + 10)]).await.unwrap();
    assert_eq!(hourly_requests(&test.db).await, 0, "recording no longer writes the totals");

    let report = sink.report(&whole_days(Some(alice))).await.unwrap();
    assert_eq!(report.totals, Totals { tokens: 12, requests: 2, rate_limited: 0, quota_rejected: 0 });
    assert_eq!(report.series.len(), 2);
    assert_eq!(hourly_requests(&test.db).await, 2);
}

async fn each_event_is_rolled_up_once_whatever_is_replayed_or_rolled_up_again(test: &TestDb) {
    let sink = SqlAnalytics::new(&test.db);
    let alice = Uuid::now_v7();
    let first = [event(alice, 1, BASE + 1), event(alice, 2, BASE + 2), event(alice, 3, BASE + HOUR)];
    sink.record(&first).await.unwrap();
    assert_eq!(rollup::roll_up(test.db.pool(), test.db.backend()).await.unwrap(), 3);
    assert_eq!(rollup::roll_up(test.db.pool(), test.db.backend()).await.unwrap(), 0, "nothing new: nothing added");

    // The relay publishes a batch again after a crash: only the new event is recorded.
    let new = event(alice, 10, BASE + 3);
    sink.record(&[first[0].clone(), first[1].clone(), new.clone(), new]).await.unwrap();
    assert_eq!(rollup::roll_up(test.db.pool(), test.db.backend()).await.unwrap(), 1);
    let report = sink.report(&whole_days(Some(alice))).await.unwrap();
    assert_eq!(report.totals, Totals { tokens: 16, requests: 4, rate_limited: 0, quota_rejected: 0 });
    assert_eq!(hourly_requests(&test.db).await, 4);
}

async fn events_a_stopped_process_did_not_roll_up_are_counted_after_it(test: &TestDb) {
    let alice = Uuid::now_v7();
    let events: Vec<Event> = (0..100).map(|i| event(alice, 1, BASE + i)).collect();
    SqlAnalytics::new(&test.db).record(&events).await.unwrap();
    test.db.pool().close().await;
    test.db.readers().close().await;

    let reopened = Database::open(&test.url).await.unwrap();
    let report = SqlAnalytics::new(&reopened).report(&whole_days(Some(alice))).await.unwrap();
    assert_eq!(report.totals.requests, 100);
    assert_eq!(rollup::roll_up(reopened.pool(), reopened.backend()).await.unwrap(), 0);
    reopened.pool().close().await;
    reopened.readers().close().await;
}

/// Eight tasks record 250 batches of 20 events each while two others roll up in a loop and a
/// third asks for reports: no event is lost or counted twice, and no report counts more than
/// was recorded or less than an earlier report did.
async fn recording_while_rolling_up_counts_every_event_once(test: &TestDb) {
    const TASKS: usize = 8;
    const BATCHES: usize = 250;
    const PER_BATCH: usize = 20;
    let total_events = || u64::try_from(TASKS * BATCHES * PER_BATCH).unwrap();
    let sink = Arc::new(SqlAnalytics::new(&test.db));
    let users: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let recorders: Vec<_> = (0..TASKS)
        .map(|t| {
            let (sink, users) = (Arc::clone(&sink), users.clone());
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let events: Vec<Event> = (0..PER_BATCH)
                        .map(|i| event(users[(t + b + i) % users.len()], 1, BASE + (b as i64 % 3) * HOUR + i as i64))
                        .collect();
                    sink.record(&events).await.unwrap();
                }
            })
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rollers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, backend, done) = (test.db.pool().clone(), test.db.backend(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut added = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    added += rollup::roll_up(&pool, backend).await.unwrap();
                }
                added
            })
        })
        .collect();
    let reader = {
        let (sink, done) = (Arc::clone(&sink), Arc::clone(&done));
        tokio::spawn(async move {
            let mut last = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let requests = sink.report(&whole_days(None)).await.unwrap().totals.requests;
                assert!(requests >= last, "a report counted {requests} after one counted {last}");
                assert!(requests <= total_events() as i64);
                last = requests;
            }
        })
    };
    for recorder in recorders {
        recorder.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut added = 0;
    for roller in rollers {
        added += roller.await.unwrap();
    }
    assert!(added <= total_events(), "the rollers added {added} events");
    reader.await.unwrap();

    let total = total_events() as i64;
    let report = sink.report(&whole_days(None)).await.unwrap();
    assert_eq!(report.totals.requests, total);
    assert_eq!(report.totals.tokens, total);
    assert_eq!(hourly_requests(&test.db).await, total);
}

/// On PostgreSQL, an insert that drew its `seq` first but commits last is still counted: a
/// transaction holding the record lock, as an insert of events does from before its rows draw
/// `seq` to its commit, has inserted an event and not committed; the sink's next insert waits
/// for it, so a roll-up in between cannot pass the first event's `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_event_committed_after_a_later_one_is_still_rolled_up() {
    let Some(test) = common::postgres().await else { return };
    let sink = Arc::new(SqlAnalytics::new(&test.db));
    let alice = Uuid::now_v7();

    let mut slow = test.db.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(leaky_store::advisory_locks::ANALYTICS_RECORD)
        .execute(&mut *slow)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO analytics_events (event_id, user_id, provider, tokens, outcome, occurred_at) \
         VALUES ($1, $2, 'openai', 1, 'allowed', $3)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(alice.to_string())
    .bind(BASE + 1)
    .execute(&mut *slow)
    .await
    .unwrap();

    let later = {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move { sink.record(&[event(alice, 1, BASE + 2)]).await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!later.is_finished(), "the second insert waits for the first to commit");
    assert_eq!(rollup::roll_up(test.db.pool(), test.db.backend()).await.unwrap(), 0, "nothing is committed yet");
    slow.commit().await.unwrap();
    later.await.unwrap();

    assert_eq!(rollup::roll_up(test.db.pool(), test.db.backend()).await.unwrap(), 2);
    assert_eq!(sink.report(&whole_days(Some(alice))).await.unwrap().totals.requests, 2);
    test.finish().await;
}
