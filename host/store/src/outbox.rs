//! The outbox relay: publishes committed events, in commit order, at least once.
//!
//! The relay's progress (the last published `seq`) moves only after the bus accepted a batch,
//! so a crash in between publishes that batch again; consumers deduplicate by event id.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use crate::bus::EventBus;
use crate::events::Event;
use crate::{Database, StoreError, now_ms};

/// Events relayed per round.
const BATCH: i64 = 1000;

/// Publishes one batch of unpublished events; returns how many.
pub async fn relay_once(db: &Database, bus: &dyn EventBus) -> Result<usize, StoreError> {
    let pool = db.pool();
    let cursor: i64 =
        sqlx::query_scalar("SELECT last_seq FROM outbox_cursor WHERE id = 1").fetch_one(db.readers()).await?;
    let rows = sqlx::query("SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(cursor)
        .bind(BATCH)
        .fetch_all(db.readers())
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(rows.len());
    let mut last_seq = 0i64;
    for row in &rows {
        last_seq = row.try_get("seq")?;
        let payload: String = row.try_get("payload")?;
        events.push(serde_json::from_str::<Event>(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    let started = std::time::Instant::now();
    bus.publish(&events).await?;
    metrics::histogram!("leaky_outbox_publish_seconds").record(started.elapsed().as_secs_f64());
    sqlx::query("UPDATE outbox_cursor SET last_seq = MAX(last_seq, ?), published_at = ? WHERE id = 1")
        .bind(last_seq)
        .bind(now_ms())
        .execute(pool)
        .await?;
    metrics::counter!("leaky_outbox_relayed_total").increment(events.len() as u64);
    Ok(events.len())
}

/// Relays forever: after every ledger commit, and at least every half second.
pub fn spawn_relay(db: Database, bus: Arc<dyn EventBus>, committed: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    crate::runtime::spawn(async move {
        loop {
            let wake = committed.notified();
            match relay_once(&db, bus.as_ref()).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox relay failed; retrying"),
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), wake).await;
        }
    })
}

/// Events not yet published (for readiness and tests).
pub async fn pending(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE seq > (SELECT last_seq FROM outbox_cursor WHERE id = 1)")
        .fetch_one(pool)
        .await?)
}
