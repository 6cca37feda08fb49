//! The ledger writer: group commit of debits and their events.
//!
//! A durable transaction costs an fsync, a few milliseconds; one per request would cap the
//! service at a few hundred requests per second. Instead every request hands its debit to one
//! writer task, which commits whatever has queued up (up to [`MAX_BATCH`]) together: the
//! ledger rows, the quota updates and the outbox events (in one transaction; on PostgreSQL in
//! up to two, [`split`]). Each caller is answered only after the transaction holding its debit
//! committed, so an answered consume is never lost, and a failed transaction fails every debit
//! in it (the caller then undoes its in-memory reservation).
//!
//! Who decides whether a debit fits its quotas is the writer's [`Arbiter`]: on a database that
//! replicas share, the transaction checks each debit against the stored quota counters (rows
//! locked on PostgreSQL), so replicas each deciding from their own view never spend more than a
//! quota holds together ([`Committed::Refused`], [`arbitrate`]); on a database only this process
//! writes, its account book already decided: the commit writes the ledger rows and events, and
//! the debits' counters are written back once per interval instead of in every commit
//! ([`PendingSpend`]; at start, [`LedgerWriter::start`] writes back what the last run left
//! pending, from the ledger rows).

mod arbitrate;
mod pending;
mod postgres;
mod replay;
mod split;
mod tally;
mod whole;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::commit_feed::{CommitFeed, CommittedEvents};
use crate::events::Event;
use crate::{Backend, Database, Pool, StoreError, now_ms};
pub use pending::PendingSpend;
use tally::Tallies;
use writes::Writes;

/// Most writes in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Most rows in one multi-row statement: at 12 columns a row, well inside both databases' limits
/// on bound parameters (SQLite 32,766, PostgreSQL 65,535) whatever the batch.
const MAX_ROWS: usize = 1000;
/// Writes queued before senders wait.
const QUEUE: usize = 65_536;
/// Quota rows with spend pending past which it is written back at once, whatever the interval.
const MAX_PENDING_ROWS: usize = 100_000;
/// How often the quota counters are written back on a database only this process writes, when
/// the caller does not say.
pub const WRITEBACK_EVERY: Duration = Duration::from_secs(1);

/// One spend of tokens against a user's quota and, when the user is in one, an org's.
#[derive(Clone, Debug)]
pub struct Debit {
    /// Unique id of the ledger entry.
    pub entry_id: Uuid,
    /// Who spends.
    pub user_id: Uuid,
    /// The user's org as the deciding process knew it, with the start of the period of the org
    /// quota that process charged (`None`: it knows no quota of the org). The database
    /// [`Arbiter`] charges the org the user is in as stored, in the stored period, instead.
    pub org: Option<(Uuid, Option<i64>)>,
    /// The provider.
    pub provider: String,
    /// Tokens consumed (the ledger row's).
    pub tokens: u64,
    /// What they cost against the quotas (the tokens, or a quota rule's price).
    pub cost: i64,
    /// Start of the user's quota period as the deciding process saw it (stored as the period
    /// start of a quota row the debit creates).
    pub user_period_start: i64,
    /// The user's limit, stored if the user's quota has no row yet (first spend on defaults).
    pub user_limit: i64,
    /// The caller's request id, if it gave one.
    pub request_id: Option<String>,
    /// The usage event written with it.
    pub event: Event,
}

/// A quota's standing as the database holds it after a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The limit of the period.
    pub limit: i64,
    /// Spent in the period.
    pub used: i64,
    /// Start of the period.
    pub period_start: i64,
    /// When the period ends, if it ever does.
    pub reset_at: Option<i64>,
}

/// Which quota refused a debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The user's own.
    User,
    /// The user's org's.
    Org,
}

/// What the database made of a debit. Replicas sharing a database each keep their own view of
/// the quotas; the commit checks every debit against the stored counters (the rows locked), so
/// together they never spend more than a quota holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Spent; the user's quota (and the org's) as stored after the commit.
    Spent {
        /// The user's quota.
        user: Standing,
        /// The org's, when the debit charged one.
        org: Option<Standing>,
    },
    /// Written as the caller decided it ([`Arbiter::Caller`]): the counters were added to, not
    /// read.
    Recorded,
    /// Refused: the `scope` quota, as stored, had too little left. Nothing was written.
    Refused {
        /// The quota that refused.
        scope: Scope,
        /// Its standing.
        standing: Standing,
    },
}

enum Write {
    Debit(Debit, oneshot::Sender<Result<Committed, StoreError>>),
    Event(Event),
    /// Write the quota counters back in this commit, whatever the interval.
    Counters(oneshot::Sender<Result<(), StoreError>>),
}

/// Who decides whether a debit fits its quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arbiter {
    /// The database: each debit is checked against the stored counters, locked. For a database
    /// that replicas share, whose counters other processes move too.
    Database,
    /// The caller: this process is the database's only writer and its account book decided
    /// each debit already; the commit adds the debits to the counters without reading them.
    Caller,
}

/// Hands writes to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Write>,
}

impl LedgerWriter {
    /// Starts the writer task on `db`, deciding quotas as `arbiter` says. `committed` hears of
    /// every commit (the outbox relay waits on it).
    ///
    /// With [`Arbiter::Caller`] on SQLite the quota counters are written back every
    /// `writeback_every` (zero: in every commit), and first the counters of the consume rows the
    /// last run committed without writing them back are; so start the writer before anything
    /// reads a counter. Anywhere else every commit writes its counters.
    pub async fn start(
        db: &Database,
        arbiter: Arbiter,
        writeback_every: Duration,
        committed: Arc<CommitFeed>,
    ) -> Result<Self, StoreError> {
        let backend = db.backend();
        let deferred = arbiter == Arbiter::Caller && backend == Backend::Sqlite;
        if backend == Backend::Sqlite {
            let replayed = replay::replay(db.pool()).await?;
            if replayed > 0 {
                tracing::info!(replayed, "wrote back the quota counters of consumes the last run left pending");
            }
            metrics::counter!("leaky_ledger_replayed_total").increment(replayed);
        }
        let counters = Counters {
            pending: Arc::clone(db.pending()),
            writeback_every: if deferred { writeback_every } else { Duration::ZERO },
            last_writeback: Instant::now(),
        };
        let writer = Writer { pool: db.pool().clone(), backend, arbiter, counters };
        let (queue, receiver) = mpsc::channel(QUEUE);
        crate::runtime::spawn(run(writer, receiver, committed));
        Ok(Self { queue })
    }

    /// Commits a debit, unless a stored quota refuses it; returns once the answer is durable.
    pub async fn debit(&self, debit: Debit) -> Result<Committed, StoreError> {
        let (done, answer) = oneshot::channel();
        self.queue.send(Write::Debit(debit, done)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Writes the quota counters back now and returns once they are (before an admin changes
    /// a quota's period, which a write-back of spend from the period before would then skip).
    pub async fn write_back(&self) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.queue.send(Write::Counters(done)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues an event with no state change (a refusal, for analytics); nobody waits for it.
    pub fn record(&self, event: Event) {
        if self.queue.try_send(Write::Event(event)).is_err() {
            metrics::counter!("leaky_events_dropped_total").increment(1);
        }
    }
}

/// Times a batch is tried again after the database broke a lock cycle or a serialization
/// conflict (PostgreSQL, replicas committing at once).
const RETRIES: usize = 3;

/// The ledger writer's database and how it keeps the quota counters.
struct Writer {
    pool: Pool,
    backend: Backend,
    arbiter: Arbiter,
    counters: Counters,
}

/// How the writer keeps the quota counters with [`Arbiter::Caller`].
struct Counters {
    /// Spend committed and not written back (the database's readers add it).
    pending: Arc<PendingSpend>,
    /// How often pending spend is written back; zero: in every commit.
    writeback_every: Duration,
    /// When it was last written back.
    last_writeback: Instant,
}

impl Counters {
    /// Whether the next commit writes the counters back.
    fn writeback_due(&self) -> bool {
        self.writeback_every.is_zero()
            || self.last_writeback.elapsed() >= self.writeback_every
            || self.pending.rows() >= MAX_PENDING_ROWS
    }

    /// When pending spend is due to be written back if no write comes first; `None` when none
    /// is pending.
    fn idle_writeback_at(&self) -> Option<Instant> {
        (!self.writeback_every.is_zero() && self.pending.rows() > 0).then(|| self.last_writeback + self.writeback_every)
    }
}

/// Sleeps until `at`; for ever when it is `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn run(mut writer: Writer, mut receiver: mpsc::Receiver<Write>, committed: Arc<CommitFeed>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let idle_writeback = writer.counters.idle_writeback_at();
        let first = tokio::select! {
            write = receiver.recv() => match write {
                Some(write) => write,
                None => break,
            },
            () = sleep_until(idle_writeback) => {
                // Idle: write back what the last commits left, in a commit of its own.
                if let Err(err) = commit(&mut writer, &[], true).await {
                    tracing::warn!(error = %err, "writing back the quota counters failed; it is tried again");
                }
                continue;
            }
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        metrics::histogram!("leaky_ledger_batch_size").record(batch.len() as f64);
        let started = Instant::now();
        let writeback = batch.iter().any(|w| matches!(w, Write::Counters(_)));
        let mut result = commit(&mut writer, &batch, writeback).await;
        for _ in 0..RETRIES {
            match &result {
                Err(StoreError::Database(err)) if is_transient(err) => {
                    metrics::counter!("leaky_ledger_retries_total").increment(1);
                    result = commit(&mut writer, &batch, writeback).await;
                }
                _ => break,
            }
        }
        metrics::histogram!("leaky_ledger_commit_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok((answers, last_seq)) => {
                let mut events = Vec::with_capacity(if last_seq.is_some() { batch.len() } else { 0 });
                for (write, answer) in batch.drain(..).zip(answers) {
                    let published = writes_event(&answer);
                    let event = match (write, answer) {
                        (Write::Debit(debit, done), Some(answer)) => {
                            let _ = done.send(answer);
                            debit.event
                        }
                        (Write::Event(event), None) => event,
                        (Write::Counters(done), None) => {
                            let _ = done.send(Ok(()));
                            continue;
                        }
                        // A debit always has an answer, and nothing else does.
                        _ => continue,
                    };
                    if last_seq.is_some() && published {
                        events.push(event);
                    }
                }
                // The script's events are the `seq`s up to the last one it wrote: it was the
                // only writer, and `AUTOINCREMENT` numbers rows one after the other.
                let handed = last_seq.map(|last_seq| {
                    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
                    CommittedEvents { first_seq: last_seq - count + 1, last_seq, events }
                });
                committed.committed(handed);
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "ledger batch failed; every debit in it is refused");
                count_failed(batch.iter().filter(|w| matches!(w, Write::Debit(..))).count());
                for write in batch.drain(..) {
                    match write {
                        Write::Debit(_, done) => {
                            let _ = done.send(Err(StoreError::CommitFailed(err.to_string())));
                        }
                        Write::Counters(done) => {
                            let _ = done.send(Err(StoreError::CommitFailed(err.to_string())));
                        }
                        Write::Event(_) => {}
                    }
                }
                committed.committed(None);
            }
        }
    }
    // Every sender is gone (the service is stopping): what is pending goes back now rather than
    // at the next start.
    if writer.counters.pending.rows() > 0
        && let Err(err) = commit(&mut writer, &[], true).await
    {
        tracing::warn!(error = %err, "writing back the quota counters at stop failed; the next start does");
    }
}

/// Counts debits refused because the transaction holding them failed (their callers answer 503).
fn count_failed(debits: usize) {
    metrics::counter!("leaky_ledger_failed_total").increment(debits as u64);
}

/// A PostgreSQL deadlock or serialization failure: the same batch may well commit when tried
/// again.
fn is_transient(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Commits a batch: on PostgreSQL with the database deciding, in up to two transactions
/// ([`split`]); elsewhere in one transaction, which decides the debits (as the writer's arbiter
/// says) and writes the granted debits' ledger rows, the counters and the outbox events, one
/// statement per table (on SQLite multi-row, up to [`MAX_ROWS`] rows each; on PostgreSQL one
/// array per column: [`postgres`]); on SQLite with [`Arbiter::Caller`] as one script
/// ([`writes`]), whose counters are written back only when due or `writeback` says so (else the
/// debits' tallies are added to the pending spend once the script committed). The answer has
/// one entry per write (`None` for an event, an error for a debit whose transaction failed),
/// and, from a script, the outbox `seq` of the last event written.
async fn commit(writer: &mut Writer, batch: &[Write], writeback: bool) -> Result<Answers, StoreError> {
    let (arbiter, backend) = (writer.arbiter, writer.backend);
    let debits: Vec<&Debit> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Debit(d, _) => Some(d),
            Write::Event(_) | Write::Counters(_) => None,
        })
        .collect();
    let tallies = match arbiter {
        Arbiter::Caller => Tallies::of(&debits),
        Arbiter::Database => Tallies::default(),
    };
    // SQLite records how far the counters include the ledger (`quota_writeback.through_seq`).
    let keeps_through_seq = backend == Backend::Sqlite;
    let counters = &mut writer.counters;
    if arbiter == Arbiter::Caller && (writeback || counters.writeback_due()) {
        let all = counters.pending.begin_writeback(tallies);
        let result = write(&writer.pool, arbiter, backend, batch, &debits, Some(&all), keeps_through_seq).await;
        counters.pending.end_writeback(result.is_ok());
        // A failed write-back keeps the spend pending and is tried again an interval later.
        counters.last_writeback = Instant::now();
        if result.is_ok() {
            metrics::counter!("leaky_ledger_writebacks_total").increment(1);
        }
        return result;
    }
    let through_seq = keeps_through_seq && arbiter == Arbiter::Database;
    let answers = write(&writer.pool, arbiter, backend, batch, &debits, None, through_seq).await?;
    if !tallies.is_empty() {
        counters.pending.add(tallies);
    }
    Ok(answers)
}

/// Writes and commits a batch (see [`commit`]); `counters`, when given, are written back to the
/// quota rows in the same transaction, and with `through_seq` the transaction records that the
/// counters include every ledger row up to its own.
async fn write(
    pool: &Pool,
    arbiter: Arbiter,
    backend: Backend,
    batch: &[Write],
    debits: &[&Debit],
    counters: Option<&Tallies>,
    through_seq: bool,
) -> Result<Answers, StoreError> {
    let now = now_ms();
    if arbiter == Arbiter::Database && backend == Backend::Postgres {
        return Ok((split::commit(pool, batch, debits, now).await?, None));
    }
    let scripted = arbiter == Arbiter::Caller && backend == Backend::Sqlite;
    let mut tx = if scripted { None } else { Some(crate::database::begin(pool).await?) };
    let (granted, decisions) = match (arbiter, tx.as_mut()) {
        _ if debits.is_empty() => (Vec::new(), Vec::new()),
        (Arbiter::Database, Some(tx)) => arbitrate::arbitrate(tx, debits, backend, now).await?,
        (Arbiter::Database, None) => return Err(StoreError::Corrupt("arbitration needs a transaction".into())),
        (Arbiter::Caller, _) => {
            let granted = debits.iter().map(|d| (*d, d.org.map(|(id, _)| id))).collect();
            (granted, vec![Committed::Recorded; debits.len()])
        }
    };

    let mut events = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    let mut decisions = decisions.into_iter();
    for write in batch {
        match write {
            Write::Debit(d, _) => {
                let decision =
                    decisions.next().ok_or_else(|| StoreError::Corrupt("a debit lost its decision".into()))?;
                let decision = Some(Ok(decision));
                if writes_event(&decision) {
                    events.push(&d.event);
                }
                answers.push(decision);
            }
            Write::Event(e) => {
                events.push(e);
                answers.push(None);
            }
            Write::Counters(_) => answers.push(None),
        }
    }
    let payloads = payloads(&events)?;

    let mut writes = match tx.as_mut() {
        Some(tx) => Writes::Each { conn: tx, backend },
        None => Writes::script(),
    };
    if let Some(counters) = counters
        && !counters.is_empty()
    {
        tally::write_back(&mut writes, counters, now).await?;
    }
    insert_ledger(&mut writes, &granted, now).await?;
    if through_seq && (counters.is_some() || !granted.is_empty()) {
        writes
            .statement(|sql| {
                sql.push(tally::WRITTEN_BACK_THROUGH_LAST_ROW);
            })
            .await?;
    }
    insert_events(&mut writes, &events, &payloads, now).await?;
    let last_seq = match (writes.into_script(), tx) {
        // The last row the script inserted is its last outbox row.
        (Some(script), _) => Some(writes::run_script(pool, script).await?).filter(|_| !events.is_empty()),
        (None, tx) => {
            if let Some(tx) = tx {
                tx.commit().await?;
            }
            None
        }
    };
    Ok((answers, last_seq))
}

/// What a group commit answers a write: a debit's decision, or why the transaction that held it
/// failed; `None` for a write that is not a debit.
type Answer = Option<Result<Committed, StoreError>>;

/// What a group commit answers: one entry per write, and, from a script, the outbox `seq` of
/// its last event.
type Answers = (Vec<Answer>, Option<i64>);

/// Whether a write with this answer wrote its event to the outbox (every one but a debit refused
/// or failed).
fn writes_event(answer: &Answer) -> bool {
    matches!(answer, None | Some(Ok(Committed::Spent { .. } | Committed::Recorded)))
}

/// Inserts the ledger rows of the granted debits (each with the org it charged), stamped `now`.
async fn insert_ledger<'q>(
    writes: &mut Writes<'_, 'q>,
    granted: &[(&'q Debit, Option<Uuid>)],
    now: i64,
) -> Result<(), StoreError> {
    if granted.is_empty() {
        return Ok(());
    }
    if writes.backend() == Backend::Postgres {
        return postgres::insert_ledger(writes, granted, now).await;
    }
    // With what writing its counters back needs, should the process stop before it does.
    for run in granted.chunks(MAX_ROWS) {
        writes
            .statement(|sql| {
                sql.push(
                    "INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at, \
                     cost, user_period_start, user_limit, org_period_start) ",
                );
                sql.padded_values(12, run, |row, (d, org)| {
                    row.bind(d.entry_id.to_string())
                        .bind("consume")
                        .bind(d.user_id.to_string())
                        .bind(org.map(|id| id.to_string()))
                        .bind(d.provider.as_str())
                        .bind(i64::try_from(d.tokens).unwrap_or(i64::MAX))
                        .bind(d.request_id.as_deref())
                        .bind(now)
                        .bind(d.cost)
                        .bind(d.user_period_start)
                        .bind(d.user_limit)
                        .bind(d.org.and_then(|(_, start)| start));
                });
            })
            .await?;
    }
    Ok(())
}

/// A quota row as a group commit writes it.
struct QuotaRow<'a> {
    owner_type: &'static str,
    owner_id: Uuid,
    provider: &'a str,
    limit: i64,
    used: i64,
    period: &'static str,
    period_start: i64,
}

/// Inserts `rows` into `quotas`, stamped `now`, [`MAX_ROWS`] to a statement, each statement
/// ending in `on_conflict` (what to do with a row that exists).
async fn write_quota_rows<'q>(
    writes: &mut Writes<'_, 'q>,
    rows: &[QuotaRow<'q>],
    now: i64,
    on_conflict: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    if writes.backend() == Backend::Postgres {
        return postgres::write_quota_rows(writes, rows, now, on_conflict).await;
    }
    for run in rows.chunks(MAX_ROWS) {
        writes
            .statement(|sql| {
                sql.push(
                    "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) ",
                );
                sql.padded_values(8, run, |row, q| {
                    row.bind(q.owner_type)
                        .bind(q.owner_id.to_string())
                        .bind(q.provider)
                        .bind(q.limit)
                        .bind(q.used)
                        .bind(q.period)
                        .bind(q.period_start)
                        .bind(now);
                });
                sql.push(" ON CONFLICT (owner_type, owner_id, provider) ").push(on_conflict);
            })
            .await?;
    }
    Ok(())
}

/// The outbox payloads (JSON) of `events`.
fn payloads(events: &[&Event]) -> Result<Vec<String>, StoreError> {
    events.iter().map(|e| serde_json::to_string(e).map_err(|err| StoreError::Corrupt(err.to_string()))).collect()
}

/// Writes events, with their `payloads`, to the outbox, in the caller's transaction.
async fn insert_events<'q>(
    writes: &mut Writes<'_, 'q>,
    events: &[&'q Event],
    payloads: &'q [String],
    now: i64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    if writes.backend() == Backend::Postgres {
        return postgres::insert_events(writes, events, payloads, crate::advisory_locks::OUTBOX, now).await;
    }
    let rows: Vec<(&Event, &String)> = events.iter().copied().zip(payloads).collect();
    for run in rows.chunks(MAX_ROWS) {
        writes
            .statement(|sql| {
                sql.push("INSERT INTO outbox (event_id, topic, key, payload, created_at) ");
                sql.padded_values(5, run, |row, (e, payload)| {
                    row.bind(e.id.to_string())
                        .bind(e.topic())
                        .bind(e.user_id.to_string())
                        .bind(payload.as_str())
                        .bind(now);
                });
            })
            .await?;
    }
    Ok(())
}

/// Writes an event to the outbox, in the caller's transaction.
pub(crate) async fn insert_event(conn: &mut sqlx::AnyConnection, event: &Event) -> Result<(), StoreError> {
    let backend = Backend::of_connection(conn);
    let payloads = payloads(&[event])?;
    insert_events(&mut Writes::Each { conn, backend }, &[event], &payloads, now_ms()).await
}

/// Whether a ledger entry exists for this request id (for audits and crash tests).
pub async fn has_request(pool: &Pool, request_id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM ledger WHERE request_id = $1").bind(request_id).fetch_optional(pool).await?;
    Ok(row.is_some())
}

/// Total tokens debited by consumes of a user for a provider.
pub async fn consumed(pool: &Pool, user_id: Uuid, provider: &str) -> Result<i64, StoreError> {
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(tokens) AS BIGINT) FROM ledger WHERE kind = 'consume' AND user_id = $1 AND provider = $2",
    )
    .bind(user_id.to_string())
    .bind(provider)
    .fetch_one(pool)
    .await?;
    Ok(total.unwrap_or(0))
}
