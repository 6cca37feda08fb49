//! The hourly totals: rolled up from the recorded events, not kept by a trigger.
//!
//! A trigger that upserts an hourly total for every event inserted rewrites, for each batch of
//! events from thousands of users, nearly every page of `analytics_hourly`. Instead the events
//! after the roll-up's cursor (`analytics_rollup`) are added to the totals in one statement,
//! which touches each total once however many events it gains, and the cursor moves in the same
//! transaction: an event is counted once, whether the process stops before or after its
//! roll-up. The service rolls up every second on SQLite and every five on PostgreSQL
//! ([`super::SqlAnalytics::keep_rolled_up`]), and a report first rolls up whatever is left, so
//! it counts every event recorded before it.
//!
//! The cursor is a position in the order events become visible, so the events after it are
//! exactly those not yet counted:
//! - On SQLite, `rowid`: `analytics_events` rows are never deleted and the database has one
//!   writer, so each new row's `rowid` is above every earlier one's.
//! - On PostgreSQL, where replicas' analytics consumers insert at the same time, `seq`
//!   (migration 0006), drawn while the insert holds [`crate::advisory_locks::ANALYTICS_RECORD`]
//!   to its commit: once a row is visible, so is every row with a lower `seq` that will ever
//!   be. Replicas' roll-ups take turns on the cursor's row lock.

use std::time::Duration;

use sqlx::Row;

use crate::{Backend, Pool, StoreError};

/// How one database rolls up: how often, how much at a time, and the statements.
struct DatabaseRollUp {
    /// How often the service rolls up the events recorded since the last time. Each roll-up
    /// writes every total its events add to once, so a longer interval writes fewer totals per
    /// event (with thousands of users active, nearly one per event at a second).
    every: Duration,
    /// Most positions one roll-up transaction takes, so that a roll-up after a long stop, with
    /// many events left over, never holds a connection for long.
    most: i64,
    /// The cursor (`through`) and the position of the last event (`last`), the cursor's row
    /// locked.
    read_cursor: &'static str,
    /// Adds the events at positions `> $1` and `<= $2` to the hourly totals.
    add_to_totals: &'static str,
    /// Whether `add_to_totals` answers how many events it added (as `added`); otherwise every
    /// position it passed was an event.
    answers_added: bool,
    /// Moves the cursor to `$1`.
    move_cursor: &'static str,
}

const SQLITE: DatabaseRollUp = DatabaseRollUp {
    // The roll-up holds the write connection the ledger's group commit also needs: often and
    // short.
    every: Duration::from_secs(1),
    most: 50_000,
    // The transaction is `BEGIN IMMEDIATE`: it holds the database's write lock from the start.
    read_cursor: "SELECT through_rowid AS through, (SELECT COALESCE(MAX(rowid), 0) FROM analytics_events) AS last \
                  FROM analytics_rollup WHERE id = 1",
    add_to_totals: "INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens) \
         SELECT (occurred_at / 3600000) * 3600000, user_id, COALESCE(org_id, ''), provider, outcome, COUNT(*), SUM(tokens) \
         FROM analytics_events WHERE rowid > $1 AND rowid <= $2 \
         GROUP BY 1, 2, 3, 4, 5 \
         ON CONFLICT (hour_start, user_id, org_id, provider, outcome) \
         DO UPDATE SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens",
    answers_added: false,
    move_cursor: "UPDATE analytics_rollup SET through_rowid = $1 WHERE id = 1",
};

const POSTGRES: DatabaseRollUp = DatabaseRollUp {
    // The roll-up holds only the mark's row lock, so it can take five seconds of events at once
    // (about 60,000 at 12,000 consumes a second) and write each total once for them.
    every: Duration::from_secs(5),
    most: 500_000,
    // A roll-up that waited for another's lock reads the cursor as that one left it.
    read_cursor: "SELECT through_seq AS through, (SELECT COALESCE(MAX(seq), 0) FROM analytics_events) AS last \
                  FROM analytics_rollup WHERE id = 1 FOR UPDATE",
    // A `seq` may be a gap (drawn by a replayed event the insert passed over, or by an insert
    // rolled back), so the statement counts the events it adds.
    add_to_totals: "WITH added AS (\
         SELECT (occurred_at / 3600000) * 3600000 AS hour_start, user_id, COALESCE(org_id, '') AS org_id, provider, \
         outcome, COUNT(*) AS requests, SUM(tokens) AS tokens \
         FROM analytics_events WHERE seq > $1 AND seq <= $2 GROUP BY 1, 2, 3, 4, 5), \
         totals AS (INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens) \
         SELECT * FROM added \
         ON CONFLICT (hour_start, user_id, org_id, provider, outcome) \
         DO UPDATE SET requests = analytics_hourly.requests + excluded.requests, \
         tokens = analytics_hourly.tokens + excluded.tokens) \
         SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS added FROM added",
    answers_added: true,
    move_cursor: "UPDATE analytics_rollup SET through_seq = $1 WHERE id = 1",
};

/// Adds every event recorded since the last roll-up to the hourly totals of `pool`'s database
/// (`backend`), in transactions of at most the database's `most` positions; returns how many
/// events it added.
pub async fn roll_up(pool: &Pool, backend: Backend) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let database = DatabaseRollUp::of(backend);
    let added = roll_up_by(pool, database, database.most).await?;
    // How long roll-ups hold their connection; one that found nothing to add tells nothing.
    if added > 0 {
        metrics::histogram!("leaky_analytics_rollup_seconds").record(started.elapsed().as_secs_f64());
    }
    Ok(added)
}

/// [`roll_up`], at most `most` positions a transaction.
async fn roll_up_by(pool: &Pool, database: &DatabaseRollUp, most: i64) -> Result<u64, StoreError> {
    let mut added = 0;
    loop {
        let (some, more) = roll_up_some(pool, database, most).await?;
        added += some;
        metrics::counter!("leaky_analytics_rolled_up_total").increment(some);
        if !more {
            return Ok(added);
        }
        tokio::task::yield_now().await;
    }
}

impl DatabaseRollUp {
    /// How `backend` rolls up.
    fn of(backend: Backend) -> &'static Self {
        match backend {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        }
    }
}

/// One transaction of [`roll_up`], of at most `most` positions: how many events it added, and
/// whether more are left.
async fn roll_up_some(pool: &Pool, database: &DatabaseRollUp, most: i64) -> Result<(u64, bool), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    let row = sqlx::query(database.read_cursor).fetch_one(&mut *tx).await?;
    let (through, last): (i64, i64) = (row.try_get("through")?, row.try_get("last")?);
    if last <= through {
        tx.rollback().await?;
        return Ok((0, false));
    }
    let upto = last.min(through.saturating_add(most));
    let add = sqlx::query(database.add_to_totals).bind(through).bind(upto);
    let added = if database.answers_added {
        add.fetch_one(&mut *tx).await?.try_get("added")?
    } else {
        add.execute(&mut *tx).await?;
        upto - through
    };
    sqlx::query(database.move_cursor).bind(upto).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok((u64::try_from(added).unwrap_or(0), upto < last))
}

/// Rolls up at the database's interval, forever: a task of its own, like the outbox's pruner.
pub(super) fn spawn(pool: Pool, backend: Backend) -> tokio::task::JoinHandle<()> {
    let every = DatabaseRollUp::of(backend).every;
    crate::runtime::spawn(async move {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(err) = roll_up(&pool, backend).await {
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

        let database = DatabaseRollUp::of(db.backend());
        assert_eq!(roll_up_some(db.pool(), database, 2).await.unwrap(), (2, true));
        assert_eq!(roll_up_by(db.pool(), database, 2).await.unwrap(), 3, "the rest, in two more transactions");
        let (requests, tokens): (i64, i64) =
            sqlx::query_as("SELECT CAST(SUM(requests) AS BIGINT), CAST(SUM(tokens) AS BIGINT) FROM analytics_hourly")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!((requests, tokens), (5, 10));
        assert_eq!(roll_up_some(db.pool(), database, 2).await.unwrap(), (0, false));
    }
}
