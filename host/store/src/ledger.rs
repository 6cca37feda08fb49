//! The ledger writer: group commit of debits and their events.
//!
//! A durable SQLite transaction costs an fsync, a few milliseconds; one per request would cap
//! the service at a few hundred requests per second. Instead every request hands its debit to
//! one writer task, which commits whatever has queued up (up to [`MAX_BATCH`]) in one
//! transaction: the ledger rows, the quota updates and the outbox events together. Each
//! caller is answered only after the transaction holding its debit committed, so an answered
//! consume is never lost, and a failed transaction fails every debit in it (the caller then
//! undoes its in-memory reservation).

use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::events::Event;
use crate::{StoreError, now_ms};

/// Most writes in one transaction (bounded by SQLite's 32,766 bound parameters per statement).
pub const MAX_BATCH: usize = 2048;
/// Writes queued before senders wait.
const QUEUE: usize = 65_536;

/// One spend of tokens against a user's quota and, when the user is in one, an org's.
#[derive(Clone, Debug)]
pub struct Debit {
    /// Unique id of the ledger entry.
    pub entry_id: Uuid,
    /// Who spends.
    pub user_id: Uuid,
    /// The user's org, charged too when present, with the start of its quota period.
    pub org: Option<(Uuid, i64)>,
    /// The provider.
    pub provider: String,
    /// Tokens charged to the quotas.
    pub tokens: u64,
    /// Start of the user's quota period the tokens count in.
    pub user_period_start: i64,
    /// The user's limit, stored if the user's quota has no row yet (first spend on defaults).
    pub user_limit: i64,
    /// The caller's request id, if it gave one.
    pub request_id: Option<String>,
    /// The usage event written with it.
    pub event: Event,
}

enum Write {
    Debit(Debit, oneshot::Sender<Result<(), StoreError>>),
    Event(Event),
}

/// Hands writes to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Write>,
}

impl LedgerWriter {
    /// Starts the writer task. `committed` is notified after every commit (the outbox relay
    /// waits on it).
    pub fn spawn(pool: SqlitePool, committed: Arc<Notify>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        crate::runtime::spawn(run(pool, receiver, committed));
        Self { queue }
    }

    /// Commits a debit; returns once it is durable.
    pub async fn debit(&self, debit: Debit) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.queue.send(Write::Debit(debit, done)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues an event with no state change (a refusal, for analytics); nobody waits for it.
    pub fn record(&self, event: Event) {
        if self.queue.try_send(Write::Event(event)).is_err() {
            metrics::counter!("leaky_events_dropped_total").increment(1);
        }
    }
}

async fn run(pool: SqlitePool, mut receiver: mpsc::Receiver<Write>, committed: Arc<Notify>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        metrics::histogram!("leaky_ledger_batch_size").record(batch.len() as f64);
        let started = std::time::Instant::now();
        let result = commit(&pool, &batch).await;
        metrics::histogram!("leaky_ledger_commit_seconds").record(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            tracing::error!(error = %err, writes = batch.len(), "ledger batch failed; every debit in it is refused");
        }
        for write in batch.drain(..) {
            if let Write::Debit(_, done) = write {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| StoreError::CommitFailed(e.to_string())));
            }
        }
        committed.notify_waiters();
    }
}

/// Commits a batch in one transaction with one statement per table: the ledger rows, the
/// outbox rows, and the quota counters (summed per quota first, since a batch often holds
/// several debits of one user or org).
async fn commit(pool: &SqlitePool, batch: &[Write]) -> Result<(), StoreError> {
    let now = now_ms();
    let debits: Vec<&Debit> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Debit(d, _) => Some(d),
            Write::Event(_) => None,
        })
        .collect();
    let events: Vec<&Event> = batch
        .iter()
        .map(|w| match w {
            Write::Debit(d, _) => &d.event,
            Write::Event(e) => e,
        })
        .collect();
    // Per quota: the newest period in the batch and the tokens spent in it. (A debit of an older
    // period, from a batch racing midnight, counts in a period that has already been reset.)
    let mut users: BTreeMap<(Uuid, &str), Spent> = BTreeMap::new();
    let mut orgs: BTreeMap<(Uuid, &str), Spent> = BTreeMap::new();
    for d in &debits {
        let tokens = i64::try_from(d.tokens).unwrap_or(i64::MAX);
        users
            .entry((d.user_id, d.provider.as_str()))
            .or_insert(Spent::new(d.user_limit))
            .add(d.user_period_start, tokens);
        if let Some((org, start)) = d.org {
            orgs.entry((org, d.provider.as_str())).or_insert(Spent::new(0)).add(start, tokens);
        }
    }

    let mut tx = pool.begin().await?;
    if !debits.is_empty() {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at) ",
        );
        insert.push_values(&debits, |mut row, d| {
            row.push_bind(d.entry_id.to_string())
                .push_bind("consume")
                .push_bind(d.user_id.to_string())
                .push_bind(d.org.map(|(id, _)| id.to_string()))
                .push_bind(d.provider.clone())
                .push_bind(i64::try_from(d.tokens).unwrap_or(i64::MAX))
                .push_bind(d.request_id.clone())
                .push_bind(now);
        });
        insert.build().execute(&mut *tx).await?;

        // Counters move by the batch's sum, one statement per owner type (each statement is a
        // round trip to SQLite's thread). A user's first spend creates the row with its default
        // limit, so a new user costs no write of its own. A later period restarts a counter; an
        // earlier one than stored is ignored.
        let mut upsert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) ",
        );
        upsert.push_values(&users, |mut row, ((id, provider), spent)| {
            row.push_bind("user")
                .push_bind(id.to_string())
                .push_bind(provider.to_string())
                .push_bind(spent.limit)
                .push_bind(spent.tokens)
                .push_bind("none")
                .push_bind(spent.period_start)
                .push_bind(now);
        });
        upsert.push(
            " ON CONFLICT (owner_type, owner_id, provider) DO UPDATE SET \
               used = CASE WHEN quotas.period_start = excluded.period_start THEN quotas.used + excluded.used \
                           WHEN quotas.period_start < excluded.period_start THEN excluded.used ELSE quotas.used END, \
               period_start = MAX(quotas.period_start, excluded.period_start), updated_at = excluded.updated_at",
        );
        upsert.build().execute(&mut *tx).await?;
        if !orgs.is_empty() {
            let mut update = QueryBuilder::<Sqlite>::new("WITH spent(owner_id, provider, tokens, period_start) AS (");
            update.push_values(&orgs, |mut row, ((id, provider), spent)| {
                row.push_bind(id.to_string())
                    .push_bind(provider.to_string())
                    .push_bind(spent.tokens)
                    .push_bind(spent.period_start);
            });
            update.push(
                ") UPDATE quotas SET \
                   used = CASE WHEN quotas.period_start = s.period_start THEN quotas.used + s.tokens ELSE s.tokens END, \
                   period_start = s.period_start, updated_at = ",
            );
            update.push_bind(now);
            update.push(
                " FROM spent AS s WHERE quotas.owner_type = 'org' AND quotas.owner_id = s.owner_id \
                 AND quotas.provider = s.provider AND quotas.period_start <= s.period_start",
            );
            update.build().execute(&mut *tx).await?;
        }
    }
    insert_events(&mut tx, &events, now).await?;
    tx.commit().await?;
    Ok(())
}

/// What a batch spends on one quota.
struct Spent {
    limit: i64,
    period_start: i64,
    tokens: i64,
}

impl Spent {
    fn new(limit: i64) -> Self {
        Self { limit, period_start: i64::MIN, tokens: 0 }
    }

    fn add(&mut self, period_start: i64, tokens: i64) {
        if period_start > self.period_start {
            self.period_start = period_start;
            self.tokens = 0;
        }
        if period_start == self.period_start {
            self.tokens += tokens;
        }
    }
}

/// Writes events to the outbox in one statement, in the caller's transaction.
async fn insert_events(conn: &mut sqlx::SqliteConnection, events: &[&Event], now: i64) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let payloads = events
        .iter()
        .map(|e| serde_json::to_string(e).map_err(|err| StoreError::Corrupt(err.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO outbox (event_id, topic, key, payload, created_at) ");
    insert.push_values(events.iter().zip(payloads), |mut row, (e, payload)| {
        row.push_bind(e.id.to_string())
            .push_bind(e.topic())
            .push_bind(e.user_id.to_string())
            .push_bind(payload)
            .push_bind(now);
    });
    insert.build().execute(conn).await?;
    Ok(())
}

/// Writes an event to the outbox, in the caller's transaction.
pub(crate) async fn insert_event(conn: &mut sqlx::SqliteConnection, event: &Event) -> Result<(), StoreError> {
    insert_events(conn, &[event], now_ms()).await
}

/// Whether a ledger entry exists for this request id (for audits and crash tests).
pub async fn has_request(pool: &SqlitePool, request_id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM ledger WHERE request_id = ?").bind(request_id).fetch_optional(pool).await?;
    Ok(row.is_some())
}

/// Total tokens debited by consumes of a user for a provider.
pub async fn consumed(pool: &SqlitePool, user_id: Uuid, provider: &str) -> Result<i64, StoreError> {
    let total: Option<i64> =
        sqlx::query_scalar("SELECT SUM(tokens) FROM ledger WHERE kind = 'consume' AND user_id = ? AND provider = ?")
            .bind(user_id.to_string())
            .bind(provider)
            .fetch_one(pool)
            .await?;
    Ok(total.unwrap_or(0))
}
