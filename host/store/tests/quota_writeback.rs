//! The quota counters written back from the ledger (SQLite, this process the only writer): spend
//! a crash left pending is written back at the next start, once, and a reading of a counter
//! never misses spend or counts it twice while write-backs run under it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use leaky_store::commit_feed::CommitFeed;
use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::{Arbiter, Debit, LedgerWriter};
use leaky_store::quotas::{self, OwnerType, Period};
use leaky_store::{Database, now_ms, orgs, purchases, users};
use uuid::Uuid;

/// A debit of 2 tokens costing 3, against `user`'s quota and the org quota `org` names, if any.
fn debit(user: Uuid, org: Option<(Uuid, Option<i64>)>) -> Debit {
    Debit {
        entry_id: Uuid::now_v7(),
        user_id: user,
        org,
        provider: "openai".into(),
        tokens: 2,
        cost: 3,
        user_period_start: 0,
        user_limit: 10_000,
        request_id: None,
        event: Event {
            id: Uuid::now_v7(),
            outcome: Outcome::Allowed,
            user_id: user,
            org_id: org.map(|(id, _)| id),
            provider: "openai".into(),
            model: None,
            tokens: 2,
            occurred_at: now_ms(),
        },
    }
}

/// `used` of the row as stored, without the spend pending write-back.
async fn row_used(db: &Database, owner: OwnerType, id: Uuid) -> Option<i64> {
    sqlx::query_scalar("SELECT used FROM quotas WHERE owner_type = $1 AND owner_id = $2 AND provider = 'openai'")
        .bind(owner.as_str())
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await
        .unwrap()
}

/// Commits `count` debits of `make` from 8 tasks at once.
async fn debit_from_tasks(writer: &LedgerWriter, count: usize, make: impl Fn() -> Debit) {
    let debits: Vec<Debit> = (0..count).map(|_| make()).collect();
    let tasks: Vec<_> = debits
        .chunks(count.div_ceil(8))
        .map(|chunk| {
            let (writer, chunk) = (writer.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for d in chunk {
                    writer.debit(d).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A sole writer on `db` that writes the counters back once an hour.
async fn hourly_writer(db: &Database) -> LedgerWriter {
    LedgerWriter::start(db, Arbiter::Caller, Duration::from_secs(3600), Arc::new(CommitFeed::new())).await.unwrap()
}

/// A process starting on the database at `url`: the database and its writer.
async fn start_on(url: &str) -> (Database, LedgerWriter) {
    let db = Database::open(url).await.unwrap();
    let writer = hourly_writer(&db).await;
    (db, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_a_crash_left_pending_is_written_back_once_at_the_next_start() {
    let t = common::sqlite().await;
    let pool = t.db.pool();
    let user = users::create(pool, "spender", "spender@example.com", "x", &["user"]).await.unwrap().id;
    let org = orgs::create(pool, "team").await.unwrap().id;
    let day = quotas::put(&t.db, OwnerType::Org, org, "openai", 100_000, Period::Daily).await.unwrap().period_start;

    // A writer that would write back only after an hour, then a "crash": it is never stopped,
    // so it never writes back.
    let writer = hourly_writer(&t.db).await;
    debit_from_tasks(&writer, 200, || debit(user, Some((org, Some(day))))).await;
    // A purchase commits in a transaction of its own meanwhile; its ledger row is no consume.
    let bought = Uuid::now_v7();
    purchases::create(pool, bought, user, "openai", 50).await.unwrap();
    let purchase = purchases::get(pool, bought).await.unwrap().unwrap();
    purchases::credit_quota(pool, &purchase, Some(org), 10_000).await.unwrap();
    assert_eq!(row_used(&t.db, OwnerType::User, user).await, Some(0), "the purchase made the row; no spend yet");
    assert_eq!(row_used(&t.db, OwnerType::Org, org).await, Some(0));
    let read = quotas::get(&t.db, OwnerType::User, user, "openai").await.unwrap().unwrap();
    assert_eq!((read.limit, read.used), (10_050, 600), "a reading adds the pending spend");
    std::mem::forget(writer);

    // The next start, on the same file: the counters are written back from the ledger rows.
    let (again, writer) = start_on(&t.url).await;
    assert_eq!(row_used(&again, OwnerType::User, user).await, Some(600));
    assert_eq!(row_used(&again, OwnerType::Org, org).await, Some(600));
    let read = quotas::get(&again, OwnerType::User, user, "openai").await.unwrap().unwrap();
    assert_eq!((read.limit, read.used), (10_050, 600), "the purchase's limit stands, its row spent nothing");
    drop(writer);

    // Started once more, nothing is written back twice.
    let (third, _writer) = start_on(&t.url).await;
    assert_eq!(row_used(&third, OwnerType::User, user).await, Some(600));
    assert_eq!(row_used(&third, OwnerType::Org, org).await, Some(600));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_never_miss_or_double_count_spend_while_it_is_written_back() {
    let t = common::sqlite().await;
    let user = users::create(t.db.pool(), "hammer", "hammer@example.com", "x", &["user"]).await.unwrap().id;
    // A write-back every 2 ms: most readings overlap one.
    let feed = Arc::new(CommitFeed::new());
    let writer = LedgerWriter::start(&t.db, Arbiter::Caller, Duration::from_millis(2), feed).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (db, done) = (t.db.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let (mut last, mut readings) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let used = quotas::get(&db, OwnerType::User, user, "openai").await.unwrap().map_or(0, |q| q.used);
                    assert!(used >= last, "a reading went back from {last} to {used}");
                    assert!(used <= 3 * 1_600, "a reading counted spend twice: {used}");
                    (last, readings) = (used, readings + 1);
                }
                readings
            })
        })
        .collect();
    debit_from_tasks(&writer, 1_600, || debit(user, None)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    let read = quotas::get(&t.db, OwnerType::User, user, "openai").await.unwrap().unwrap();
    assert_eq!(read.used, 3 * 1_600);
    writer.write_back().await.unwrap();
    assert_eq!(row_used(&t.db, OwnerType::User, user).await, Some(3 * 1_600));
    t.finish().await;
}
