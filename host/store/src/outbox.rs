//! The outbox relay: publishes committed events, in commit order, at least once.
//!
//! The relay's progress (the last published `seq`) moves only after the bus accepted a batch,
//! so a crash in between publishes that batch again; consumers deduplicate by event id.
//!
//! Published events stay in the outbox for a while (for an operator replaying a topic by
//! hand, say), then a pruner task of its own deletes them ([`spawn_pruner`], [`prune`]); the
//! outbox keeps only what is not yet published and the recent past, instead of growing with
//! every request forever.
//!
//! On SQLite the relay publishes what the ledger writer hands it after a commit
//! ([`CommitFeed`]) when that continues exactly where its cursor stands, and reads the outbox
//! otherwise; either way the cursor moves the same way.
//!
//! A row holds one event, or (on PostgreSQL, where a group commit writes its events together)
//! `events` of them packed ([`packed`]); the relay, the count of pending events and the pruner
//! count events, not rows.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;

use crate::bus::{BoxFuture, EventBus, StoredEvent};
use crate::commit_feed::CommitFeed;
use crate::events::Event;
use crate::{Backend, Database, Pool, StoreError, now_ms};

pub(crate) mod packed;

/// Events relayed per round: the rows after the cursor up to the first that reaches this many
/// (at least one row, however many events it packs).
const BATCH: i64 = 1000;

/// Publishes one batch of unpublished events; returns how many.
///
/// On SQLite the scan reads through the read-only connections and only the cursor's move takes
/// the writer. On a shared (PostgreSQL) database, replicas take turns: a relay that cannot take
/// the relay lock (held until its transaction ends) leaves the round to the one holding it.
pub async fn relay_once(db: &Database, bus: &dyn EventBus) -> Result<usize, StoreError> {
    match db.backend() {
        Backend::Sqlite => {
            let (events, last_seq) = unpublished(db.readers(), None).await?;
            publish_stored(bus, &events).await?;
            advance(db.pool(), last_seq).await?;
            Ok(events.len())
        }
        Backend::Postgres => {
            let mut tx = crate::database::begin(db.pool()).await?;
            // The cursor's move need not wait for the disk: a crash that loses it publishes
            // those events again, which consumers drop by event id.
            sqlx::query("SET LOCAL synchronous_commit TO OFF").execute(&mut *tx).await?;
            // Another replica's relay holds the lock: no rows, and nothing to do.
            let (events, last_seq) = unpublished(&mut *tx, Some(crate::advisory_locks::RELAY)).await?;
            publish_stored(bus, &events).await?;
            advance(&mut *tx, last_seq).await?;
            tx.commit().await?;
            Ok(events.len())
        }
    }
}

/// The next batch after the cursor, as stored, and the `seq` of its last event. With `lock`
/// (PostgreSQL), only if this transaction takes that advisory lock, in the same statement: no
/// rows when another transaction holds it.
async fn unpublished<'c, E>(conn: E, lock: Option<i64>) -> Result<(Vec<StoredEvent>, i64), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    // The next rows (at most a batch of them), then of those the rows before the one that
    // reaches a batch of events, and that one. An uncorrelated scalar subquery (the lock) runs
    // once per execution, not once per row.
    let query = match lock {
        Some(lock) => sqlx::query(
            "SELECT seq, events, event_id, topic, key, payload FROM (SELECT next.*, \
             SUM(events) OVER (ORDER BY seq) - events AS before FROM (SELECT seq, CAST(events AS BIGINT) AS events, \
             event_id, topic, key, payload FROM outbox WHERE (SELECT pg_try_advisory_xact_lock($2)) \
             AND seq > (SELECT last_seq FROM outbox_cursor WHERE id = 1) ORDER BY seq LIMIT $1) AS next) AS counted \
             WHERE before < $1 ORDER BY seq",
        )
        .bind(BATCH)
        .bind(lock),
        None => sqlx::query(
            "SELECT seq, events, event_id, topic, key, payload FROM (SELECT next.*, \
             SUM(events) OVER (ORDER BY seq) - events AS before FROM (SELECT seq, CAST(events AS BIGINT) AS events, \
             event_id, topic, key, payload FROM outbox \
             WHERE seq > (SELECT last_seq FROM outbox_cursor WHERE id = 1) ORDER BY seq LIMIT $1) AS next) AS counted \
             WHERE before < $1 ORDER BY seq",
        )
        .bind(BATCH),
    };
    read_rows(&query.fetch_all(conn).await?)
}

/// The events of outbox `rows` (`seq`, `events`, `event_id`, `topic`, `key`, `payload`), in
/// order, and the `seq` of the last row (0 for none).
fn read_rows(rows: &[sqlx::any::AnyRow]) -> Result<(Vec<StoredEvent>, i64), StoreError> {
    let mut events = Vec::with_capacity(rows.len());
    let mut last_seq = 0i64;
    for row in rows {
        last_seq = row.try_get("seq")?;
        let payload: String = row.try_get("payload")?;
        match row.try_get::<Option<String>, _>("event_id")? {
            Some(id) => events.push(StoredEvent {
                id: id.parse().map_err(|e| StoreError::Corrupt(format!("outbox event id {id:?}: {e}")))?,
                topic: row.try_get("topic")?,
                key: row.try_get("key")?,
                payload,
            }),
            None => packed::unpack(&payload, row.try_get::<i64, _>("events")?, &mut events)?,
        }
    }
    Ok((events, last_seq))
}

/// Every event the outbox holds, published or not, in the order it is relayed (for inspection
/// and tests).
pub async fn stored(pool: &Pool) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, CAST(events AS BIGINT) AS events, event_id, topic, key, payload FROM outbox ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    Ok(read_rows(&rows)?.0)
}

/// One round of the spawned relay. On SQLite only this process moves the cursor, so the relay
/// keeps it in `cursor` and first tries the batch the writer handed over; whenever it has none
/// that continues the cursor, it reads the outbox (and the cursor) as [`relay_once`] does.
async fn relay_round(
    db: &Database,
    bus: &dyn EventBus,
    feed: &CommitFeed,
    cursor: &mut Option<i64>,
) -> Result<usize, StoreError> {
    if db.backend() != Backend::Sqlite {
        return relay_once(db, bus).await;
    }
    if let Some(at) = *cursor
        && let Some(batch) = feed.next_after(at)
    {
        *cursor = None;
        publish(bus, &batch.events).await?;
        advance(db.pool(), batch.last_seq).await?;
        *cursor = Some(batch.last_seq);
        metrics::counter!("leaky_outbox_handed_total").increment(batch.events.len() as u64);
        return Ok(batch.events.len());
    }
    *cursor = None;
    let at: i64 = sqlx::query_scalar("SELECT last_seq FROM outbox_cursor WHERE id = 1").fetch_one(db.readers()).await?;
    let (events, last_seq) = unpublished(db.readers(), None).await?;
    publish_stored(bus, &events).await?;
    advance(db.pool(), last_seq).await?;
    *cursor = Some(last_seq.max(at));
    Ok(events.len())
}

/// Publishes events the ledger writer handed over.
async fn publish(bus: &dyn EventBus, events: &[Event]) -> Result<(), StoreError> {
    timed(events.len(), bus.publish(events)).await
}

/// Publishes events read back from the outbox, as stored.
async fn publish_stored(bus: &dyn EventBus, events: &[StoredEvent]) -> Result<(), StoreError> {
    timed(events.len(), bus.publish_stored(events)).await
}

/// Awaits the publishing of `count` events (none: nothing to await) and counts them.
async fn timed(count: usize, publishing: BoxFuture<'_, Result<(), StoreError>>) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    publishing.await?;
    metrics::histogram!("leaky_outbox_publish_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("leaky_outbox_relayed_total").increment(count as u64);
    Ok(())
}

/// Moves the cursor to `last_seq` (never back).
async fn advance<'c, E>(conn: E, last_seq: i64) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if last_seq == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE outbox_cursor SET last_seq = CASE WHEN last_seq < $1 THEN $1 ELSE last_seq END, published_at = $2 \
         WHERE id = 1",
    )
    .bind(last_seq)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// How often the service deletes published events past their keeping time.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Most rows one prune statement deletes (so the write connection is never held for long;
/// other writers take turns between statements).
const PRUNE_BATCH: i64 = 5000;

/// Relays forever: after every ledger commit, and at least every half second.
///
/// A round that published a whole [`BATCH`] or more may have left more behind, so another
/// follows at once. A smaller one took everything committed before it began; what was committed
/// since has woken the relay already (the wake-up is armed before the round), so it waits for
/// that instead of asking the database again only to find nothing.
pub fn spawn_relay(db: Database, bus: Arc<dyn EventBus>, committed: Arc<CommitFeed>) -> tokio::task::JoinHandle<()> {
    crate::runtime::spawn(async move {
        let mut cursor = None;
        let whole = usize::try_from(BATCH).unwrap_or(usize::MAX);
        loop {
            let wake = committed.notified();
            match relay_round(&db, bus.as_ref(), &committed, &mut cursor).await {
                Ok(n) if n >= whole => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox relay failed; retrying"),
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), wake).await;
        }
    })
}

/// Deletes published events older than `keep_published`, `every` so often ([`PRUNE_EVERY`] in
/// the service), forever: a task of its own, so a long prune never holds up the relay.
pub fn spawn_pruner(db: Database, keep_published: Duration, every: Duration) -> tokio::task::JoinHandle<()> {
    crate::runtime::spawn(async move {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let before = now_ms().saturating_sub(i64::try_from(keep_published.as_millis()).unwrap_or(i64::MAX));
            if let Err(err) = prune(db.pool(), before).await {
                tracing::warn!(error = %err, "cannot prune the outbox; trying again later");
            }
        }
    })
}

/// Deletes the published events written before `before` (ms since the epoch), from the oldest
/// on, a few thousand rows per statement; returns how many events. Events after the relay's
/// cursor are never deleted.
pub async fn prune(pool: &Pool, before: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let rows: Vec<i64> = sqlx::query_scalar(
            // Of the oldest published rows, those written before `before`: each statement reads
            // at most one batch of rows from the start of the index, however many are kept.
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE seq <= (SELECT last_seq FROM outbox_cursor WHERE id = 1) ORDER BY seq LIMIT $2) \
             AND created_at < $1 RETURNING CAST(events AS BIGINT)",
        )
        .bind(before)
        .bind(PRUNE_BATCH)
        .fetch_all(pool)
        .await?;
        let events = rows.iter().map(|&n| u64::try_from(n).unwrap_or(0)).sum::<u64>();
        deleted += events;
        metrics::counter!("leaky_outbox_pruned_total").increment(events);
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < PRUNE_BATCH {
            return Ok(deleted);
        }
        tokio::task::yield_now().await;
    }
}

/// Events not yet published (for readiness and tests).
pub async fn pending(pool: &Pool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM outbox \
         WHERE seq > (SELECT last_seq FROM outbox_cursor WHERE id = 1)",
    )
    .fetch_one(pool)
    .await?)
}
