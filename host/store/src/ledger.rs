//! The ledger writer: group commit of debits and their events.
//!
//! A durable transaction costs an fsync, a few milliseconds; one per request would cap the
//! service at a few hundred requests per second. Instead every request hands its debit to one
//! writer task, which commits whatever has queued up (up to [`MAX_BATCH`]) in one transaction:
//! the ledger rows, the quota updates and the outbox events together. Each caller is answered
//! only after the transaction holding its debit committed, so an answered consume is never
//! lost, and a failed transaction fails every debit in it (the caller then undoes its
//! in-memory reservation).
//!
//! The transaction decides too: it checks each debit against the stored quota counters (rows
//! locked on PostgreSQL), so replicas sharing the database, each deciding from its own view,
//! never spend more than a quota holds together ([`Committed::Refused`]).

use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::events::Event;
use crate::quotas::Period;
use crate::sql::Sql;
use crate::{Backend, Pool, StoreError, now_ms};

/// Most writes in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Most rows in one multi-row statement: at 8 columns a row, well inside both databases' limits
/// on bound parameters (SQLite 32,766, PostgreSQL 65,535) whatever the batch.
const MAX_ROWS: usize = 1000;
/// Writes queued before senders wait.
const QUEUE: usize = 65_536;

/// One spend of tokens against a user's quota and, when the user is in one, an org's.
#[derive(Clone, Debug)]
pub struct Debit {
    /// Unique id of the ledger entry.
    pub entry_id: Uuid,
    /// Who spends.
    pub user_id: Uuid,
    /// The user's org as the deciding process knew it, with the start of its quota's period
    /// as that process saw it (to give a reservation back). The commit charges the org the
    /// user is in as stored, in the stored period.
    pub org: Option<(Uuid, i64)>,
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
}

/// Hands writes to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Write>,
}

impl LedgerWriter {
    /// Starts the writer task. `committed` is notified after every commit (the outbox relay
    /// waits on it).
    pub fn spawn(pool: Pool, committed: Arc<Notify>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        crate::runtime::spawn(run(pool, receiver, committed));
        Self { queue }
    }

    /// Commits a debit, unless a stored quota refuses it; returns once the answer is durable.
    pub async fn debit(&self, debit: Debit) -> Result<Committed, StoreError> {
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

/// Times a batch is tried again after the database broke a lock cycle or a serialization
/// conflict (PostgreSQL, replicas committing at once).
const RETRIES: usize = 3;

async fn run(pool: Pool, mut receiver: mpsc::Receiver<Write>, committed: Arc<Notify>) {
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
        let mut result = commit(&pool, &batch).await;
        for _ in 0..RETRIES {
            match &result {
                Err(StoreError::Database(err)) if is_transient(err) => {
                    metrics::counter!("leaky_ledger_retries_total").increment(1);
                    result = commit(&pool, &batch).await;
                }
                _ => break,
            }
        }
        metrics::histogram!("leaky_ledger_commit_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(answers) => {
                for (write, answer) in batch.drain(..).zip(answers) {
                    if let (Write::Debit(_, done), Some(committed)) = (write, answer) {
                        let _ = done.send(Ok(committed));
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "ledger batch failed; every debit in it is refused");
                for write in batch.drain(..) {
                    if let Write::Debit(_, done) = write {
                        let _ = done.send(Err(StoreError::CommitFailed(err.to_string())));
                    }
                }
            }
        }
        committed.notify_waiters();
    }
}

/// A PostgreSQL deadlock or serialization failure: the same batch may well commit when tried
/// again.
fn is_transient(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// A quota row: (owner type, owner id, provider).
type QuotaKey = (&'static str, Uuid, String);

/// A locked quota row: its standing, its period and the start of that period as of the commit.
#[derive(Clone, Copy)]
struct Locked {
    standing: Standing,
    period: Period,
    current_start: i64,
}

/// Commits a batch in one transaction: makes sure every user has a quota row, locks the quota
/// rows the batch touches, decides each debit against them in order, then writes the granted
/// debits' ledger rows, the counters and the outbox events, one multi-row statement per
/// table (up to [`MAX_ROWS`] rows each). The answer has one entry per write (`None` for an
/// event).
async fn commit(pool: &Pool, batch: &[Write]) -> Result<Vec<Option<Committed>>, StoreError> {
    let now = now_ms();
    let debits: Vec<&Debit> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Debit(d, _) => Some(d),
            Write::Event(_) => None,
        })
        .collect();
    let mut tx = crate::database::begin(pool).await?;
    let backend = Backend::of_connection(&tx);
    let (mut rows, orgs) = if debits.is_empty() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        lock_quotas(&mut tx, &debits, backend, now).await?
    };

    // Decide each debit against the stored counters, in the order they were queued.
    let mut granted = Vec::with_capacity(debits.len());
    let mut decisions = Vec::with_capacity(debits.len());
    let mut touched = BTreeSet::new();
    for d in &debits {
        let org = orgs.get(&d.user_id).copied().flatten();
        let decision = decide(d, org, &mut rows, &mut touched)?;
        if matches!(decision, Committed::Spent { .. }) {
            granted.push((*d, org));
        }
        decisions.push(decision);
    }

    for run in granted.chunks(MAX_ROWS) {
        let mut insert = Sql::new(
            backend,
            "INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at) ",
        );
        insert.values(run, |row, (d, org)| {
            row.bind(d.entry_id.to_string())
                .bind("consume")
                .bind(d.user_id.to_string())
                .bind(org.map(|id| id.to_string()))
                .bind(d.provider.clone())
                .bind(i64::try_from(d.tokens).unwrap_or(i64::MAX))
                .bind(d.request_id.clone())
                .bind(now);
        });
        insert.execute(&mut *tx).await?;
    }

    // The rows exist (they are locked): an upsert that always takes its update branch finds each
    // one through the primary key, on both databases (an UPDATE ... FROM a VALUES list lets
    // SQLite scan the whole table).
    let changed: Vec<(&QuotaKey, &Locked)> = touched.iter().filter_map(|k| rows.get_key_value(k)).collect();
    for run in changed.chunks(MAX_ROWS) {
        let mut update = Sql::new(
            backend,
            "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) ",
        );
        update.values(run, |row, ((kind, id, provider), locked)| {
            let s = locked.standing;
            row.bind(*kind)
                .bind(id.to_string())
                .bind(provider.clone())
                .bind(s.limit)
                .bind(s.used)
                .bind(locked.period.as_str())
                .bind(s.period_start)
                .bind(now);
        });
        update.push(
            " ON CONFLICT (owner_type, owner_id, provider) DO UPDATE SET used = excluded.used, \
             period_start = excluded.period_start, updated_at = excluded.updated_at",
        );
        update.execute(&mut *tx).await?;
    }

    let mut events = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    let mut decisions = decisions.into_iter();
    for write in batch {
        match write {
            Write::Debit(d, _) => {
                let decision =
                    decisions.next().ok_or_else(|| StoreError::Corrupt("a debit lost its decision".into()))?;
                if matches!(decision, Committed::Spent { .. }) {
                    events.push(&d.event);
                }
                answers.push(Some(decision));
            }
            Write::Event(e) => {
                events.push(e);
                answers.push(None);
            }
        }
    }
    insert_events(&mut tx, &events, now).await?;
    tx.commit().await?;
    Ok(answers)
}

/// Each spending user's org, as stored now.
type Orgs = BTreeMap<Uuid, Option<Uuid>>;

/// Reads each spending user's org as stored now (another replica may have just changed it; the
/// org a debit carries is only what its process last knew), creates the quota rows of users
/// spending for the first time (with their default limits), then reads, and on PostgreSQL
/// locks, every quota row the batch touches (the users' and their orgs'), in one order for all
/// replicas (so two batches never wait for each other in a cycle).
async fn lock_quotas(
    tx: &mut sqlx::AnyConnection,
    debits: &[&Debit],
    backend: Backend,
    now: i64,
) -> Result<(BTreeMap<QuotaKey, Locked>, Orgs), StoreError> {
    let ids: Vec<Uuid> = debits.iter().map(|d| d.user_id).collect::<BTreeSet<_>>().into_iter().collect();
    let mut orgs = Orgs::new();
    for run in ids.chunks(MAX_ROWS) {
        read_orgs(tx, backend, run, &mut orgs).await?;
    }
    let mut users: BTreeMap<(Uuid, &str), &Debit> = BTreeMap::new();
    let mut keys: BTreeSet<QuotaKey> = BTreeSet::new();
    for d in debits {
        users.entry((d.user_id, d.provider.as_str())).or_insert(d);
        keys.insert(("user", d.user_id, d.provider.clone()));
        if let Some(org) = orgs.get(&d.user_id).copied().flatten() {
            keys.insert(("org", org, d.provider.clone()));
        }
    }
    // One order for every replica's locks: users before orgs, then by id and provider, byte by
    // byte (the order of the SELECT below, and of the rows a first spend creates).
    let mut keys: Vec<QuotaKey> = keys.into_iter().collect();
    keys.sort_by(|a, b| (a.0 != "user", a.1, &a.2).cmp(&(b.0 != "user", b.1, &b.2)));
    let users: Vec<((Uuid, &str), &Debit)> = users.into_iter().collect();
    for run in users.chunks(MAX_ROWS) {
        create_user_rows(tx, backend, run, now).await?;
    }
    let mut standings = BTreeMap::new();
    for run in keys.chunks(MAX_ROWS) {
        lock_rows(tx, backend, run, now, &mut standings).await?;
    }
    Ok((standings, orgs))
}

/// Adds the stored org of each user of `ids` to `orgs`.
async fn read_orgs(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    ids: &[Uuid],
    orgs: &mut Orgs,
) -> Result<(), StoreError> {
    let mut select = Sql::new(backend, "SELECT u.id, u.org_id FROM (");
    select.values(ids, |row, id| {
        row.bind(id.to_string());
    });
    select.push(") AS w CROSS JOIN users AS u WHERE u.id = w.column1");
    for row in select.fetch_all(&mut *tx).await? {
        let id = crate::users::parse_uuid(&row.try_get::<String, _>("id")?)?;
        let org = row.try_get::<Option<String>, _>("org_id")?.as_deref().map(crate::users::parse_uuid).transpose()?;
        orgs.insert(id, org);
    }
    Ok(())
}

/// Creates the quota rows of users spending for the first time, with their default limits.
async fn create_user_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    users: &[((Uuid, &str), &Debit)],
    now: i64,
) -> Result<(), StoreError> {
    let mut create = Sql::new(
        backend,
        "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) ",
    );
    create.values(users, |row, ((id, provider), d)| {
        row.bind("user")
            .bind(id.to_string())
            .bind(provider.to_string())
            .bind(d.user_limit)
            .bind(0_i64)
            .bind("none")
            .bind(d.user_period_start)
            .bind(now);
    });
    create.push(" ON CONFLICT (owner_type, owner_id, provider) DO NOTHING");
    create.execute(&mut *tx).await?;
    Ok(())
}

/// Reads, and on PostgreSQL locks in `keys`' order, the quota rows of `keys`.
async fn lock_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    keys: &[QuotaKey],
    now: i64,
    standings: &mut BTreeMap<QuotaKey, Locked>,
) -> Result<(), StoreError> {
    // The wanted keys drive the join (SQLite keeps a CROSS JOIN's order), so each row is found
    // through the primary key.
    let mut select = Sql::new(
        backend,
        "SELECT q.owner_type, q.owner_id, q.provider, q.quota_limit, q.used, q.period, q.period_start FROM (",
    );
    select.values(keys, |row, (kind, id, provider)| {
        row.bind(*kind).bind(id.to_string()).bind(provider.clone());
    });
    select.push(
        ") AS w CROSS JOIN quotas AS q \
         WHERE q.owner_type = w.column1 AND q.owner_id = w.column2 AND q.provider = w.column3",
    );
    if backend == Backend::Postgres {
        select.push(" ORDER BY q.owner_type DESC, q.owner_id COLLATE \"C\", q.provider COLLATE \"C\" FOR UPDATE OF q");
    }
    for row in select.fetch_all(&mut *tx).await? {
        let kind = match row.try_get::<String, _>("owner_type")?.as_str() {
            "user" => "user",
            _ => "org",
        };
        let id = crate::users::parse_uuid(&row.try_get::<String, _>("owner_id")?)?;
        let period = Period::parse(&row.try_get::<String, _>("period")?)?;
        let period_start = row.try_get("period_start")?;
        let standing = Standing {
            limit: row.try_get("quota_limit")?,
            used: row.try_get("used")?,
            period_start,
            reset_at: period.end(period_start),
        };
        let locked = Locked { standing, period, current_start: period.start(now) };
        standings.insert((kind, id, row.try_get("provider")?), locked);
    }
    Ok(())
}

/// Decides one debit of a user in `org` against the locked rows, applying it to them when it
/// fits. The stored period decides: a row whose period has ended starts again from zero first.
fn decide(
    d: &Debit,
    org: Option<Uuid>,
    rows: &mut BTreeMap<QuotaKey, Locked>,
    touched: &mut BTreeSet<QuotaKey>,
) -> Result<Committed, StoreError> {
    let tokens = d.cost;
    let user_key: QuotaKey = ("user", d.user_id, d.provider.clone());
    let user = rolled(rows.get(&user_key).ok_or_else(|| StoreError::Corrupt("a user's quota row is missing".into()))?);
    if user.used + tokens > user.limit {
        return Ok(Committed::Refused { scope: Scope::User, standing: user });
    }
    let org_key: Option<QuotaKey> = org.map(|id| ("org", id, d.provider.clone()));
    let org = match org_key.as_ref().and_then(|key| rows.get(key)) {
        Some(locked) => {
            let org = rolled(locked);
            if org.used + tokens > org.limit {
                return Ok(Committed::Refused { scope: Scope::Org, standing: org });
            }
            Some(org)
        }
        None => None,
    };
    let mut spend = |key: QuotaKey, mut standing: Standing| {
        standing.used += tokens;
        if let Some(locked) = rows.get_mut(&key) {
            locked.standing = standing;
        }
        touched.insert(key);
        standing
    };
    let user = spend(user_key, user);
    let org = org.zip(org_key).map(|(standing, key)| spend(key, standing));
    Ok(Committed::Spent { user, org })
}

/// A locked row's standing in the period current at the commit.
fn rolled(locked: &Locked) -> Standing {
    let mut standing = locked.standing;
    if locked.current_start > standing.period_start {
        standing.used = 0;
        standing.period_start = locked.current_start;
        standing.reset_at = locked.period.end(locked.current_start);
    }
    standing
}

/// The PostgreSQL advisory lock held from a transaction's first outbox row to its commit, so
/// outbox rows become visible in `seq` order (the relay never passes a row still uncommitted).
const OUTBOX_LOCK: i64 = 0x6c65_616b_7902;

/// Writes events to the outbox, in the caller's transaction.
async fn insert_events(conn: &mut sqlx::AnyConnection, events: &[&Event], now: i64) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = events
        .iter()
        .map(|e| Ok((*e, serde_json::to_string(e).map_err(|err| StoreError::Corrupt(err.to_string()))?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let backend = Backend::of_connection(conn);
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(OUTBOX_LOCK).execute(&mut *conn).await?;
    }
    for run in rows.chunks(MAX_ROWS) {
        let mut insert = Sql::new(backend, "INSERT INTO outbox (event_id, topic, key, payload, created_at) ");
        insert.values(run, |row, (e, payload)| {
            row.bind(e.id.to_string()).bind(e.topic()).bind(e.user_id.to_string()).bind(payload.clone()).bind(now);
        });
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes an event to the outbox, in the caller's transaction.
pub(crate) async fn insert_event(conn: &mut sqlx::AnyConnection, event: &Event) -> Result<(), StoreError> {
    insert_events(conn, &[event], now_ms()).await
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
