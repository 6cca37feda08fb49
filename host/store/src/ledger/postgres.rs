//! The group commit's statements on PostgreSQL: one parameter per column, an array
//! ([`crate::pg_array`]) unnested in the statement, so each statement's text is the same
//! whatever the batch and the connection keeps it prepared.
//!
//! Measured on the distributed setup, the multi-row `VALUES` forms these replace were planned
//! anew for every batch, and the planner joined a `VALUES` list of a hundred keys to the whole
//! `users` and `quotas` tables by scanning them (3 ms each a batch); here every key is found
//! through the primary key.

use uuid::Uuid;

use super::arbitrate::QuotaKey;
use super::writes::Writes;
use super::{Debit, QuotaRow};
use crate::StoreError;
use crate::events::Event;
use crate::outbox::packed;
use crate::pg_array::{ints, texts};
use crate::quotas::Period;
use crate::sql::Sql;

/// The statement reading the `id` and `org_id` of the users of `ids`.
pub(super) fn select_orgs(ids: &[Uuid]) -> Sql<'static> {
    let mut select = Sql::new(crate::Backend::Postgres, "SELECT id, org_id FROM users WHERE id = ANY(");
    select.array(texts(ids.iter().map(Some))).push(")");
    select
}

/// The statement reading and locking the quota rows of `keys`, one after the other in `keys`'
/// order (the order every replica locks in).
pub(super) fn lock_rows(keys: &[QuotaKey]) -> Sql<'static> {
    // A lateral subquery is run once per key, in the keys' order, through the primary key.
    let mut select = Sql::new(
        crate::Backend::Postgres,
        "SELECT q.owner_type, q.owner_id, q.provider, q.quota_limit, q.used, q.period, q.period_start \
         FROM ",
    );
    select
        .unnest([
            texts(keys.iter().map(|(kind, _, _)| Some(kind))),
            texts(keys.iter().map(|(_, id, _)| Some(id))),
            texts(keys.iter().map(|(_, _, provider)| Some(provider))),
        ])
        .push(
            " WITH ORDINALITY AS w(owner_type, owner_id, provider, n) \
             CROSS JOIN LATERAL (SELECT * FROM quotas AS q WHERE q.owner_type = w.owner_type \
             AND q.owner_id = w.owner_id AND q.provider = w.provider FOR UPDATE) AS q ORDER BY w.n",
        );
    select
}

/// The statement that commits, on its own (one round trip, a transaction of its own), the
/// debits of every `(user, provider, total)` of `spends` whose whole total fits: it adds the
/// total to that user's quota row in one conditional update ([`push_spend_fitting`]), inserts
/// the ledger row of each debit of `debits` the update spent, and writes to the outbox, as one
/// packed row in `outbox`'s order ([`crate::outbox::packed`]), each event of a debit the update
/// spent and each event of no debit (`None`). It answers the quota rows it changed, as changed.
///
/// `debits` are the debits of `outbox`, in the same order. The lines of every event go as one
/// text parameter. Where the update spent every total (a steady state) that is the row as it
/// is; otherwise the statement keeps only the lines of the events it spent, each found by its
/// debit's position.
pub(super) fn commit_fitting(
    spends: &[(Uuid, &str, i64)],
    debits: &[&Debit],
    outbox: &[(&Event, &str, Option<&Debit>)],
    lock: i64,
    now: i64,
) -> Sql<'static> {
    let mut lines = String::new();
    // Each line's debit, by its position in `debits` from 1 (0: an event of no debit).
    let mut debit_of_line = Vec::with_capacity(outbox.len());
    let mut debits_seen = 0;
    for (event, payload, debit) in outbox {
        packed::push_line(&mut lines, event, payload);
        debit_of_line.push(match debit {
            Some(debit) => {
                debits_seen += 1;
                debug_assert!(std::ptr::eq(*debit, debits[debits_seen - 1]), "the outbox's debits are not in order");
                i64::try_from(debits_seen).unwrap_or(i64::MAX)
            }
            None => 0,
        });
    }
    let mut sql = Sql::new(crate::Backend::Postgres, "WITH spent AS (");
    push_spend_fitting(&mut sql, spends, now);
    // A row the update changed is its user's whole spend for that provider: every debit of the
    // user for the provider in the batch is spent.
    const SPENT: &str = "EXISTS (SELECT 1 FROM spent AS s WHERE s.owner_id = w.user_id AND s.provider = w.provider)";
    sql.push(
        "), ledger_rows AS (INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at) \
         SELECT w.entry_id, 'consume', w.user_id, NULL, w.provider, w.tokens, w.request_id, ",
    )
    .bind(now)
    .push(" FROM ");
    // The debits' users and providers are read again for the outbox's lines.
    let (users, providers) = (sql.bound() + 2, sql.bound() + 3);
    sql.unnest([
        texts(debits.iter().map(|d| Some(d.entry_id))),
        texts(debits.iter().map(|d| Some(d.user_id))),
        texts(debits.iter().map(|d| Some(&d.provider))),
        ints(debits.iter().map(|d| i64::try_from(d.tokens).unwrap_or(i64::MAX))),
        texts(debits.iter().map(|d| d.request_id.as_deref())),
    ])
    .push(" WITH ORDINALITY AS w(entry_id, user_id, provider, tokens, request_id, n) WHERE ")
    .push(SPENT)
    .push(" ORDER BY w.n), events AS (INSERT INTO outbox (events, payload, created_at) SELECT p.events, p.lines, ")
    .bind(now)
    // The lock is taken before the row draws its `seq`, and held to the commit.
    .push(" FROM (SELECT pg_advisory_xact_lock(")
    .bind(lock)
    .push(")) AS held, (SELECT ")
    .bind(i64::try_from(outbox.len()).unwrap_or(i64::MAX))
    .push("::integer AS events, ");
    let (every_event, all_lines) = (sql.bound(), sql.bound() + 1);
    sql.bind(lines).push("::text AS lines WHERE ");
    sql.again(every_event).push("::integer > 0 AND (SELECT count(*) FROM spent) = ");
    sql.bind(i64::try_from(spends.len()).unwrap_or(i64::MAX)).push("::bigint");
    let every_spend = sql.bound();
    sql.push(
        " UNION ALL SELECT count(*)::integer, string_agg(l.line, E'\\n' ORDER BY l.n) \
         FROM string_to_table(",
    )
    .again(all_lines)
    .push(", E'\\n') WITH ORDINALITY AS l(line, n) JOIN unnest(")
    .array(ints(debit_of_line))
    .push(") WITH ORDINALITY AS o(debit, n) USING (n) LEFT JOIN unnest(")
    .again(users)
    .push("::text[], ")
    .again(providers)
    .push(
        "::text[]) WITH ORDINALITY AS w(user_id, provider, debit) ON w.debit = o.debit \
         WHERE (SELECT count(*) FROM spent) <> ",
    )
    .again(every_spend)
    .push(" AND (o.debit = 0 OR ")
    .push(SPENT)
    .push(
        ") HAVING count(*) > 0) AS p) \
         SELECT owner_id, provider, quota_limit, used, period, period_start FROM spent",
    );
    sql
}

/// Appends the update that adds each `(user, provider, total)` of `spends` to that user's quota
/// row, in one conditional update, where the row exists, the user is in no org as stored, and
/// the whole total fits the limit in the period current at `now` (a row whose period has ended
/// starts again from zero first); it answers the rows it changed, as changed.
///
/// The update takes each row's lock itself. When another transaction changed a row first,
/// PostgreSQL either checks the condition again on the row as that one left it, or no longer
/// finds the row by the tuple id it read and leaves it alone; a debit left alone is decided
/// under lock afterwards ([`super::arbitrate`]). Each
/// key's row is found through the primary key (`OFFSET 0` keeps the planner from turning the
/// lateral lookups into a join that scans the whole table), whether its user is in an org
/// through the index of org members (`users_in_orgs`, migration 0007), and rows are locked in
/// `spends`' order.
fn push_spend_fitting(update: &mut Sql<'static>, spends: &[(Uuid, &str, i64)], now: i64) {
    // The start of the row's period current at `now`, from the row as the update sees it.
    const CURRENT: &str = "(CASE q.period WHEN 'daily' THEN x.daily WHEN 'monthly' THEN x.monthly ELSE 0 END)";
    // What the row has spent in that period.
    let spent = format!("CASE WHEN {CURRENT} > q.period_start THEN 0 ELSE q.used END");
    update
        .push("UPDATE quotas AS q SET used = ")
        .push(&spent)
        .push(&format!(" + x.total, period_start = GREATEST(q.period_start, {CURRENT}), updated_at = "))
        .bind(now)
        .push(" FROM (SELECT w.total, f.at, ")
        .bind(Period::Daily.start(now))
        .push("::bigint AS daily, ")
        .bind(Period::Monthly.start(now))
        .push("::bigint AS monthly FROM ")
        .unnest([
            texts(spends.iter().map(|(user, _, _)| Some(user))),
            texts(spends.iter().map(|(_, provider, _)| Some(provider))),
            ints(spends.iter().map(|(_, _, total)| *total)),
        ])
        .push(
            " WITH ORDINALITY AS w(owner_id, provider, total, n) \
             CROSS JOIN LATERAL (SELECT ctid AS at FROM quotas \
             WHERE owner_type = 'user' AND owner_id = w.owner_id AND provider = w.provider \
             AND NOT EXISTS (SELECT 1 FROM users WHERE id = w.owner_id AND org_id IS NOT NULL) OFFSET 0) AS f \
             ORDER BY w.n) AS x WHERE q.ctid = x.at AND ",
        )
        .push(&spent)
        .push(
            " + x.total <= q.quota_limit \
             RETURNING q.owner_id, q.provider, q.quota_limit, q.used, q.period, q.period_start",
        );
}

/// Inserts `rows` into `quotas`, stamped `now`, ending in `on_conflict`.
pub(super) async fn write_quota_rows<'q>(
    writes: &mut Writes<'_, 'q>,
    rows: &[QuotaRow<'q>],
    now: i64,
    on_conflict: &str,
) -> Result<(), StoreError> {
    writes
        .statement(|sql| {
            sql.push(
                "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) \
                 SELECT w.*, ",
            )
            .bind(now)
            .push(" FROM ")
            .unnest([
                texts(rows.iter().map(|q| Some(q.owner_type))),
                texts(rows.iter().map(|q| Some(q.owner_id))),
                texts(rows.iter().map(|q| Some(q.provider))),
                ints(rows.iter().map(|q| q.limit)),
                ints(rows.iter().map(|q| q.used)),
                texts(rows.iter().map(|q| Some(q.period))),
                ints(rows.iter().map(|q| q.period_start)),
            ])
            .push(" AS w ON CONFLICT (owner_type, owner_id, provider) ")
            .push(on_conflict);
        })
        .await
}

/// Inserts the ledger rows of the granted debits (each with the org it charged), stamped `now`.
pub(super) async fn insert_ledger(
    writes: &mut Writes<'_, '_>,
    granted: &[(&Debit, Option<Uuid>)],
    now: i64,
) -> Result<(), StoreError> {
    writes
        .statement(|sql| {
            sql.push(
                "INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at) \
                 SELECT w.entry_id, 'consume', w.user_id, w.org_id, w.provider, w.tokens, w.request_id, ",
            )
            .bind(now)
            .push(" FROM ")
            .unnest([
                texts(granted.iter().map(|(d, _)| Some(d.entry_id))),
                texts(granted.iter().map(|(d, _)| Some(d.user_id))),
                texts(granted.iter().map(|(_, org)| org.as_ref())),
                texts(granted.iter().map(|(d, _)| Some(&d.provider))),
                ints(granted.iter().map(|(d, _)| i64::try_from(d.tokens).unwrap_or(i64::MAX))),
                texts(granted.iter().map(|(d, _)| d.request_id.as_deref())),
            ])
            .push(" AS w(entry_id, user_id, org_id, provider, tokens, request_id)");
        })
        .await
}

/// Writes events, with their `payloads`, to the outbox in their order, after taking `lock`
/// (held to the commit) in the same statement: the lock is taken before the first row draws its
/// `seq`.
pub(super) async fn insert_events<'q>(
    writes: &mut Writes<'_, 'q>,
    events: &[&'q Event],
    payloads: &'q [String],
    lock: i64,
    now: i64,
) -> Result<(), StoreError> {
    writes
        .statement(|sql| {
            sql.push("INSERT INTO outbox (event_id, topic, key, payload, created_at) SELECT w.event_id, w.topic, w.key, w.payload, ")
                .bind(now)
                .push(" FROM (SELECT pg_advisory_xact_lock(")
                .bind(lock)
                .push(")) AS held, ")
                .unnest([
                    texts(events.iter().map(|e| Some(e.id))),
                    texts(events.iter().map(|e| Some(e.topic()))),
                    texts(events.iter().map(|e| Some(e.user_id))),
                    texts(payloads.iter().map(Some)),
                ])
                .push(" WITH ORDINALITY AS w(event_id, topic, key, payload, n) ORDER BY w.n");
        })
        .await
}
