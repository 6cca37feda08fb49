//! The hourly totals on SQLite: rolled up from the recorded events, not kept by a trigger.
//!
//! A trigger that upserts an hourly total for every event inserted rewrites, for each batch of
//! events from thousands of users, nearly every page of `analytics_hourly`. Instead the events
//! after `analytics_rollup.through_rowid` are added to the totals in one statement, which
//! touches each total once however many events it gains, and `through_rowid` moves in the same
//! transaction: an event is counted once, whether the process stops before or after its
//! roll-up. The service rolls up every [`ROLL_UP_EVERY`] ([`super::SqlAnalytics::keep_rolled_up`]),
//! and a report first rolls up whatever is left, so it counts every event recorded before it.
//!
//! `analytics_events` rows are never deleted, so each new row's `rowid` is above every earlier
//! one's and the `rowid`s after `through_rowid` are exactly the events not yet counted.
//! PostgreSQL keeps its trigger (migration 0005 says why).

use std::time::Duration;

use sqlx::Row;

use crate::{Pool, StoreError};

/// How often the service rolls up the events recorded since the last time.
pub const ROLL_UP_EVERY: Duration = Duration::from_secs(1);

/// Most events one roll-up transaction takes, so that the write connection, which the ledger's
/// group commit also needs, is never held long (after a long stop, say, with many left over).
const MOST_EVENTS: i64 = 50_000;

/// Adds the events `rowid`s `> through` and `<= upto` to the hourly totals.
const ADD_TO_TOTALS: &str = "INSERT INTO analytics_hourly \
     (hour_start, user_id, org_id, provider, outcome, requests, tokens) \
     SELECT (occurred_at / 3600000) * 3600000, user_id, COALESCE(org_id, ''), provider, outcome, COUNT(*), SUM(tokens) \
     FROM analytics_events WHERE rowid > $1 AND rowid <= $2 \
     GROUP BY 1, 2, 3, 4, 5 \
     ON CONFLICT (hour_start, user_id, org_id, provider, outcome) \
     DO UPDATE SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens";

/// Adds every event recorded since the last roll-up to the hourly totals (SQLite), in
/// transactions of at most [`MOST_EVENTS`]; returns how many events it added.
pub async fn roll_up(pool: &Pool) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let added = roll_up_by(pool, MOST_EVENTS).await?;
    // How long roll-ups hold the write connection; one that found nothing to add tells nothing.
    if added > 0 {
        metrics::histogram!("leaky_analytics_rollup_seconds").record(started.elapsed().as_secs_f64());
    }
    Ok(added)
}

/// [`roll_up`], at most `most` events a transaction.
async fn roll_up_by(pool: &Pool, most: i64) -> Result<u64, StoreError> {
    let mut added = 0;
    loop {
        let (some, more) = roll_up_some(pool, most).await?;
        added += some;
        metrics::counter!("leaky_analytics_rolled_up_total").increment(some);
        if !more {
            return Ok(added);
        }
        tokio::task::yield_now().await;
    }
}

/// One transaction of [`roll_up`], of at most `most` events: how many it added, and whether
/// more are left.
async fn roll_up_some(pool: &Pool, most: i64) -> Result<(u64, bool), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    let row = sqlx::query(
        "SELECT through_rowid, (SELECT COALESCE(MAX(rowid), 0) FROM analytics_events) AS last \
         FROM analytics_rollup WHERE id = 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    let (through, last): (i64, i64) = (row.try_get("through_rowid")?, row.try_get("last")?);
    if last <= through {
        tx.rollback().await?;
        return Ok((0, false));
    }
    let upto = last.min(through.saturating_add(most));
    sqlx::query(ADD_TO_TOTALS).bind(through).bind(upto).execute(&mut *tx).await?;
    sqlx::query("UPDATE analytics_rollup SET through_rowid = $1 WHERE id = 1").bind(upto).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok((u64::try_from(upto - through).unwrap_or(0), upto < last))
}

/// Rolls up every `every`, forever (SQLite): a task of its own, like the outbox's pruner.
pub(super) fn spawn(pool: Pool, every: Duration) -> tokio::task::JoinHandle<()> {
    crate::runtime::spawn(async move {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(err) = roll_up(&pool).await {
                tracing::warn!(error = %err, "cannot roll up the hourly analytics totals; trying again later");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Database;
    use crate::analytics::{AnalyticsSink, SqlAnalytics};
    use crate::events::{Event, Outcome};

    #[tokio::test]
    async fn a_backlog_is_rolled_up_in_transactions_of_at_most_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&format!("sqlite://{}", dir.path().join("leaky.db").display())).await.unwrap();
        let user = uuid::Uuid::now_v7();
        let events: Vec<Event> = (0..5)
            .map(|i| Event {
                id: uuid::Uuid::now_v7(),
                outcome: Outcome::Allowed,
                user_id: user,
                org_id: None,
                provider: "openai".into(),
                model: None,
                tokens: 2,
                occurred_at: 1_700_000_000_000 + i,
            })
            .collect();
        SqlAnalytics::new(&db).record(&events).await.unwrap();

        assert_eq!(roll_up_some(db.pool(), 2).await.unwrap(), (2, true));
        assert_eq!(roll_up_by(db.pool(), 2).await.unwrap(), 3, "the rest, in two more transactions");
        let (requests, tokens): (i64, i64) =
            sqlx::query_as("SELECT CAST(SUM(requests) AS BIGINT), CAST(SUM(tokens) AS BIGINT) FROM analytics_hourly")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!((requests, tokens), (5, 10));
        assert_eq!(roll_up_some(db.pool(), 2).await.unwrap(), (0, false));
    }
}
