//! [`Arbiter::Database`](super::Arbiter::Database): the commit decides each debit against the
//! stored quota counters, so replicas sharing the database, each deciding from its own view,
//! never spend more than a quota holds together.
//!
//! On PostgreSQL the users whose whole spend in the batch fits are spent first, in a statement
//! of their own ([`super::split`]). The rest (on SQLite, every debit) are decided here, under
//! lock: it reads each spending user's org as stored, reads (and on PostgreSQL locks, in one
//! global order) every quota row those debits touch, creates (and locks) the rows of first
//! spends, decides each debit in the stored period, and writes the counters back.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use uuid::Uuid;

use super::postgres;
use super::writes::Writes;
use super::{Committed, Debit, MAX_ROWS, QuotaRow, Scope, Standing, write_quota_rows};
use crate::quotas::Period;
use crate::sql::Sql;
use crate::{Backend, StoreError};

/// The debits a batch grants (each with the org it charged, as stored) and the answer to each
/// debit, in the order given.
pub(super) type Decided<'a> = (Vec<(&'a Debit, Option<Uuid>)>, Vec<Committed>);

/// Decides `debits`, in order, on their quota rows read under lock, and writes the counters
/// back.
pub(super) async fn arbitrate<'a>(
    tx: &mut sqlx::AnyConnection,
    debits: &[&'a Debit],
    backend: Backend,
    now: i64,
) -> Result<Decided<'a>, StoreError> {
    metrics::counter!("leaky_quota_decided_total", "how" => "locked").increment(debits.len() as u64);
    let (mut rows, orgs) = lock_quotas(tx, debits, backend, now).await?;
    let mut granted = Vec::with_capacity(debits.len());
    let mut decisions = Vec::with_capacity(debits.len());
    let mut touched = BTreeSet::new();
    for d in debits {
        let org = orgs.get(&d.user_id).copied().flatten();
        let decision = decide(d, org, &mut rows, &mut touched)?;
        if matches!(decision, Committed::Spent { .. }) {
            granted.push((*d, org));
        }
        decisions.push(decision);
    }

    // The rows exist (they are locked): an upsert that always takes its update branch finds each
    // one through the primary key, on both databases (an UPDATE ... FROM a VALUES list lets
    // SQLite scan the whole table).
    let changed: Vec<QuotaRow> = touched
        .iter()
        .filter_map(|k| rows.get_key_value(k))
        .map(|((kind, id, provider), locked)| QuotaRow {
            owner_type: kind,
            owner_id: *id,
            provider,
            limit: locked.standing.limit,
            used: locked.standing.used,
            period: locked.period.as_str(),
            period_start: locked.standing.period_start,
        })
        .collect();
    write_quota_rows(
        &mut Writes::Each { conn: tx, backend },
        &changed,
        now,
        "DO UPDATE SET used = excluded.used, period_start = excluded.period_start, updated_at = excluded.updated_at",
    )
    .await?;
    Ok((granted, decisions))
}

/// A quota row: (owner type, owner id, provider).
pub(super) type QuotaKey = (&'static str, Uuid, String);

/// A locked quota row: its standing, its period and the start of that period as of the commit.
#[derive(Clone, Copy)]
struct Locked {
    standing: Standing,
    period: Period,
    current_start: i64,
}

/// Each spending user's org, as stored now.
type Orgs = BTreeMap<Uuid, Option<Uuid>>;

/// Reads each spending user's org as stored now (another replica may have just changed it; the
/// org a debit carries is only what its process last knew), then reads, and on PostgreSQL
/// locks, every quota row the batch touches (the users' and their orgs'), in one order for all
/// replicas (so two batches never wait for each other in a cycle), and last creates and locks
/// the rows of users spending for the first time (with their default limits). A batch that
/// waits on another's new row holds no lock that one wants: it took all its others first, and
/// the database breaks any cycle left, after which the batch is tried again.
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
    // byte (the order of the SELECT below).
    let mut keys: Vec<QuotaKey> = keys.into_iter().collect();
    keys.sort_by(|a, b| (a.0 != "user", a.1, &a.2).cmp(&(b.0 != "user", b.1, &b.2)));
    let mut standings = BTreeMap::new();
    for run in keys.chunks(MAX_ROWS) {
        lock_rows(tx, backend, run, now, &mut standings).await?;
    }
    // First spends: a user with no row yet gets one, with the limit the deciding process knew,
    // and it is locked like the others (another transaction may have created it meanwhile).
    // Most batches have none, and skip both statements.
    let missing: Vec<QuotaKey> =
        keys.into_iter().filter(|key| key.0 == "user" && !standings.contains_key(key)).collect();
    if !missing.is_empty() {
        let first: Vec<QuotaRow> = missing
            .iter()
            .filter_map(|(_, id, provider)| users.get(&(*id, provider.as_str())))
            .map(|d| QuotaRow {
                owner_type: "user",
                owner_id: d.user_id,
                provider: &d.provider,
                limit: d.user_limit,
                used: 0,
                period: "none",
                period_start: d.user_period_start,
            })
            .collect();
        write_quota_rows(&mut Writes::Each { conn: &mut *tx, backend }, &first, now, "DO NOTHING").await?;
        for run in missing.chunks(MAX_ROWS) {
            lock_rows(tx, backend, run, now, &mut standings).await?;
        }
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
    let select = match backend {
        Backend::Postgres => postgres::select_orgs(ids),
        Backend::Sqlite => {
            let mut select = Sql::new(backend, "SELECT u.id, u.org_id FROM (");
            select.values(ids, |row, id| {
                row.bind(id.to_string());
            });
            select.push(") AS w CROSS JOIN users AS u WHERE u.id = w.column1");
            select
        }
    };
    for row in select.fetch_all(&mut *tx).await? {
        let id = crate::users::parse_uuid(&row.try_get::<String, _>("id")?)?;
        let org = row.try_get::<Option<String>, _>("org_id")?.as_deref().map(crate::users::parse_uuid).transpose()?;
        orgs.insert(id, org);
    }
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
    let select = match backend {
        Backend::Postgres => postgres::lock_rows(keys),
        Backend::Sqlite => {
            // The wanted keys drive the join (SQLite keeps a CROSS JOIN's order), so each row is
            // found through the primary key. The transaction holds SQLite's only write lock.
            let mut select = Sql::new(
                backend,
                "SELECT q.owner_type, q.owner_id, q.provider, q.quota_limit, q.used, q.period, q.period_start FROM (",
            );
            select.values(keys, |row, (kind, id, provider)| {
                row.bind(*kind).bind(id.to_string()).bind(provider.as_str());
            });
            select.push(
                ") AS w CROSS JOIN quotas AS q \
                 WHERE q.owner_type = w.column1 AND q.owner_id = w.column2 AND q.provider = w.column3",
            );
            select
        }
    };
    for row in select.fetch_all(&mut *tx).await? {
        let (key, locked) = parse_locked(&row, now)?;
        standings.insert(key, locked);
    }
    Ok(())
}

/// A quota row as read (`owner_type`, `owner_id`, `provider`, `quota_limit`, `used`, `period`,
/// `period_start`), with the start of its period current at `now`.
fn parse_locked(row: &sqlx::any::AnyRow, now: i64) -> Result<(QuotaKey, Locked), StoreError> {
    let kind = match row.try_get::<String, _>("owner_type")?.as_str() {
        "user" => "user",
        _ => "org",
    };
    let (id, provider, period, standing) = parse_quota_row(row)?;
    Ok(((kind, id, provider), Locked { standing, period, current_start: period.start(now) }))
}

/// A quota row's owner, provider, period and standing, as read (`owner_id`, `provider`,
/// `quota_limit`, `used`, `period`, `period_start`).
pub(super) fn parse_quota_row(row: &sqlx::any::AnyRow) -> Result<(Uuid, String, Period, Standing), StoreError> {
    let id = crate::users::parse_uuid(&row.try_get::<String, _>("owner_id")?)?;
    let period = Period::parse(&row.try_get::<String, _>("period")?)?;
    let period_start = row.try_get("period_start")?;
    let standing = Standing {
        limit: row.try_get("quota_limit")?,
        used: row.try_get("used")?,
        period_start,
        reset_at: period.end(period_start),
    };
    Ok((id, row.try_get("provider")?, period, standing))
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
