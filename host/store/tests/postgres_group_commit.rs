//! PostgreSQL's group commit in two transactions: the users whose whole spend fits are committed
//! in one statement of their own, and the debits left are decided under lock in a second
//! transaction, so a failure there fails only those debits. (Which PostgreSQL, and what happens
//! without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Counters, debit, user};
use leaky_store::bus::StoredEvent;
use leaky_store::commit_feed::CommitFeed;
use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::{self, Arbiter, Committed, Debit, LedgerWriter, WRITEBACK_EVERY};
use leaky_store::quotas::{self, OwnerType};
use leaky_store::{Database, StoreError, outbox};
use uuid::Uuid;

/// Debits of a user whose quota row exists, queued in one batch with a first spend (no row yet,
/// so decided under lock) whose ledger insert fails on an entry id used before.
const FITTING: usize = 20;

/// The outbox's events keyed by `user`, in order.
async fn outbox_events_of(db: &Database, user: Uuid) -> Vec<StoredEvent> {
    let key = user.to_string();
    outbox::stored(db.pool()).await.unwrap().into_iter().filter(|e| e.key == key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_failure_under_lock_fails_only_the_debits_decided_there() {
    let counters = Counters::default();
    metrics::set_global_recorder(counters.clone()).unwrap();
    let Some(t) = common::postgres().await else { return };
    let writer =
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let refused_user = Uuid::now_v7();
    let (blocker, fitting, first) =
        (user(&t.db, "blocker").await, user(&t.db, "fitting").await, user(&t.db, "first").await);
    // First spends create the quota rows of `blocker` and `fitting`.
    writer.debit(debit(blocker, None, 1_000)).await.unwrap();
    let earlier = debit(fitting, None, 1_000);
    writer.debit(earlier.clone()).await.unwrap();

    // Hold the writer on `blocker`'s row while the batch under test queues behind it, so that
    // the whole batch is taken at once when the lock goes.
    let mut holder = t.db.pool().begin().await.unwrap();
    sqlx::query("SELECT used FROM quotas WHERE owner_id = $1 FOR UPDATE")
        .bind(blocker.to_string())
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let held = tokio::spawn({
        let writer = writer.clone();
        async move { writer.debit(debit(blocker, None, 1_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the writer waits on the held row");
    let mut queued = Vec::new();
    for _ in 0..FITTING {
        let writer = writer.clone();
        queued.push(tokio::spawn(async move { writer.debit(debit(fitting, None, 1_000)).await }));
    }
    let failing = Debit { entry_id: earlier.entry_id, ..debit(first, None, 1_000) };
    let failing = tokio::spawn({
        let writer = writer.clone();
        async move { writer.debit(failing).await }
    });
    // A refusal's event, which no debit carries, goes in the same batch.
    let refused = Event { outcome: Outcome::RateLimited, ..debit(refused_user, None, 1_000).event };
    writer.record(refused.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();
    assert!(matches!(held.await.unwrap(), Ok(Committed::Spent { .. })));

    let mut used = Vec::new();
    for debit in queued {
        match debit.await.unwrap() {
            Ok(Committed::Spent { user, org: None }) => used.push(user.used),
            other => panic!("a debit that fits was answered {other:?}"),
        }
    }
    used.sort_unstable();
    assert_eq!(used, (2..=1 + FITTING as i64).collect::<Vec<_>>(), "each answered with the count after it");
    let failed = failing.await.unwrap();
    assert!(matches!(failed, Err(StoreError::CommitFailed(_))), "{failed:?}");
    assert_eq!(counters.get("leaky_ledger_failed_total"), 1, "the refused debit is counted");

    // What fits is stored with its events; nothing of the failed first spend is.
    let stored = quotas::get(&t.db, OwnerType::User, fitting, "openai").await.unwrap().unwrap();
    assert_eq!(stored.used, 1 + FITTING as i64);
    assert_eq!(ledger::consumed(t.db.pool(), fitting, "openai").await.unwrap(), 1 + FITTING as i64);
    assert_eq!(outbox_events_of(&t.db, fitting).await.len(), 1 + FITTING);
    assert!(
        quotas::get(&t.db, OwnerType::User, first, "openai").await.unwrap().is_none(),
        "no row of the failed spend"
    );
    assert_eq!(ledger::consumed(t.db.pool(), first, "openai").await.unwrap(), 0);
    assert!(outbox_events_of(&t.db, first).await.is_empty());
    let refusal = outbox_events_of(&t.db, refused_user).await.remove(0).payload;
    assert!(refusal.contains(&refused.id.to_string()) && refusal.contains("rate_limited"), "{refusal}");

    // The next first spend of that user goes through.
    assert!(matches!(writer.debit(debit(first, None, 1_000)).await.unwrap(), Committed::Spent { .. }));
    t.finish().await;
}
