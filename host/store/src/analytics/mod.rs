//! The analytics sink: records events once each and answers usage reports.
//!
//! The SQL sink keeps one row per event (its id is what makes a replay change nothing) and
//! hourly totals per user, org, provider and outcome (`analytics_hourly`, migration 0003),
//! rolled up from the events every few seconds and before every report ([`rollup`]). A report
//! reads the totals for the whole hours of its range and the events only for the rest, so
//! neither recording an event nor reading a month costs a write or a read per event at a random
//! place of an index.

use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::bus::BoxFuture;
use crate::events::Event;
use crate::pg_array::{ints, texts};
use crate::sql::Sql;
use crate::{Backend, Pool, StoreError};

mod copy;
pub mod rollup;

/// What a report covers.
#[derive(Clone, Debug)]
pub struct ReportQuery {
    /// Only this user's events.
    pub user_id: Option<Uuid>,
    /// Only this org's events.
    pub org_id: Option<Uuid>,
    /// Only this provider.
    pub provider: Option<String>,
    /// From (inclusive), ms.
    pub from: i64,
    /// To (exclusive), ms.
    pub to: i64,
    /// Series bucket length, ms (an hour or a day).
    pub bucket_ms: i64,
}

/// Totals over the whole range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Tokens spent by allowed requests.
    pub tokens: i64,
    /// Allowed requests.
    pub requests: i64,
    /// Requests refused by the rate limit.
    pub rate_limited: i64,
    /// Requests refused by a quota.
    pub quota_rejected: i64,
}

/// One bucket of the series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Start of the bucket, ms.
    pub start: i64,
    /// Tokens spent.
    pub tokens: i64,
    /// Allowed requests.
    pub requests: i64,
}

/// Spending per provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTotal {
    /// The provider.
    pub provider: String,
    /// Tokens spent.
    pub tokens: i64,
    /// Allowed requests.
    pub requests: i64,
}

/// A usage report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Totals.
    pub totals: Totals,
    /// Allowed spending per bucket, oldest first (empty buckets left out).
    pub series: Vec<Bucket>,
    /// Allowed spending per provider.
    pub by_provider: Vec<ProviderTotal>,
}

/// Where analytics events end up. Recording the same event twice changes nothing.
pub trait AnalyticsSink: Send + Sync {
    /// Records events, ignoring ids already recorded.
    fn record<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Answers a report.
    fn report<'a>(&'a self, query: &'a ReportQuery) -> BoxFuture<'a, Result<Report, StoreError>>;
}

/// The SQL sink, in the service's own database.
pub struct SqlAnalytics {
    pool: Pool,
    readers: Pool,
    /// The driver's own connections, for loading events with `COPY` (PostgreSQL only).
    bulk: Option<sqlx::PgPool>,
    backend: Backend,
}

impl SqlAnalytics {
    /// A sink on this database.
    pub fn new(db: &crate::Database) -> Self {
        Self { pool: db.pool().clone(), readers: db.readers().clone(), bulk: db.bulk().cloned(), backend: db.backend() }
    }

    /// Rolls the hourly totals up from now on, every second on SQLite and every five seconds
    /// on PostgreSQL ([`rollup`]), so a report finds little left to roll up.
    pub fn keep_rolled_up(&self) {
        rollup::spawn(self.pool.clone(), self.backend);
    }
}

/// The length of a bucket of the hourly totals (`analytics_hourly`), ms.
const HOUR_MS: i64 = 3_600_000;

/// The whole hours within `[from, to)`, as `[first, end)`, when there is at least one.
fn whole_hours(from: i64, to: i64) -> Option<(i64, i64)> {
    let first = from + (HOUR_MS - from.rem_euclid(HOUR_MS)) % HOUR_MS;
    let end = to - to.rem_euclid(HOUR_MS);
    (first < end).then_some((first, end))
}

/// Appends the filters of `q` other than its time range.
fn owner_and_provider<'q>(b: &mut Sql<'q>, q: &'q ReportQuery) {
    if let Some(user) = q.user_id {
        b.push(" AND user_id = ").bind(user.to_string());
    }
    if let Some(org) = q.org_id {
        b.push(" AND org_id = ").bind(org.to_string());
    }
    if let Some(provider) = &q.provider {
        b.push(" AND provider = ").bind(provider.as_str());
    }
}

/// `select` over the usage `q` covers, as rows of `(moment, provider, outcome, requests,
/// tokens)`: the hourly totals for the whole hours of the range, and the events themselves for
/// the parts before the first whole hour and after the last one (or for all of a range that
/// holds no whole hour). Every moment falls in the bucket it would as an event: an hour's
/// total lies at the start of its hour, and hours nest in the series' hours and days.
fn usage<'q>(backend: Backend, select: &str, q: &'q ReportQuery) -> Sql<'q> {
    let mut b = Sql::new(backend, select);
    b.push(
        " FROM (SELECT occurred_at AS moment, provider, outcome, 1 AS requests, tokens FROM analytics_events WHERE ",
    );
    let hours = whole_hours(q.from, q.to);
    match hours {
        Some((first, end)) => {
            b.push("((occurred_at >= ").bind(q.from).push(" AND occurred_at < ").bind(first);
            b.push(") OR (occurred_at >= ").bind(end).push(" AND occurred_at < ").bind(q.to).push("))");
        }
        None => {
            b.push("occurred_at >= ").bind(q.from).push(" AND occurred_at < ").bind(q.to);
        }
    }
    owner_and_provider(&mut b, q);
    if let Some((first, end)) = hours {
        b.push(
            " UNION ALL SELECT hour_start AS moment, provider, outcome, requests, tokens FROM analytics_hourly \
             WHERE hour_start >= ",
        )
        .bind(first)
        .push(" AND hour_start < ")
        .bind(end);
        owner_and_provider(&mut b, q);
    }
    b.push(") AS usage_rows");
    b
}

/// Most events the SQL sink writes in one statement (and so in one transaction): SQLite's limit
/// on bound parameters allows 4,095 rows of 8. Writers that gather events take as many
/// ([`crate::kafka`]'s analytics consumer).
pub const EVENTS_PER_STATEMENT: usize = 2_000;

const INSERT: &str =
    "INSERT INTO analytics_events (event_id, user_id, org_id, provider, model, tokens, outcome, occurred_at) ";

/// The insert of `events` on SQLite: one `VALUES` list, padded ([`Sql::padded_values`]), the text
/// bound as borrowed.
fn sqlite_insert(events: &[Event]) -> Sql<'_> {
    let mut insert = Sql::new(Backend::Sqlite, INSERT);
    insert.padded_values(8, events, |row, e| {
        row.bind(e.id.to_string())
            .bind(e.user_id.to_string())
            .bind(e.org_id.map(|o| o.to_string()))
            .bind(e.provider.as_str())
            .bind(e.model.as_deref())
            .bind(i64::try_from(e.tokens).unwrap_or(i64::MAX))
            .bind(e.outcome.as_str())
            .bind(e.occurred_at);
    });
    insert.push(" ON CONFLICT (event_id) DO NOTHING");
    insert
}

/// The insert of `events` on PostgreSQL passing over the ids recorded before (for a batch that
/// holds some: a replay): one array per column ([`crate::pg_array`]), so the statement stays
/// prepared whatever the batch. It takes
/// [`crate::advisory_locks::ANALYTICS_RECORD`] (held to its commit) before its rows draw their
/// `seq`: the sort by position consumes every input row, and so the lock, before the first row
/// is inserted.
fn postgres_insert_passing_over_recorded(events: &[Event]) -> Sql<'static> {
    let mut insert = Sql::new(Backend::Postgres, INSERT);
    insert
        .push(
            "SELECT w.event_id, w.user_id, w.org_id, w.provider, w.model, w.tokens, w.outcome, w.occurred_at \
               FROM (SELECT pg_advisory_xact_lock(",
        )
        .bind(crate::advisory_locks::ANALYTICS_RECORD)
        .push(")) AS held, ")
        .unnest([
            texts(events.iter().map(|e| Some(e.id))),
            texts(events.iter().map(|e| Some(e.user_id))),
            texts(events.iter().map(|e| e.org_id)),
            texts(events.iter().map(|e| Some(&e.provider))),
            texts(events.iter().map(|e| e.model.as_ref())),
            ints(events.iter().map(|e| i64::try_from(e.tokens).unwrap_or(i64::MAX))),
            texts(events.iter().map(|e| Some(e.outcome.as_str()))),
            ints(events.iter().map(|e| e.occurred_at)),
        ])
        .push(
            " WITH ORDINALITY AS w(event_id, user_id, org_id, provider, model, tokens, outcome, occurred_at, n) \
             ORDER BY w.n ON CONFLICT (event_id) DO NOTHING",
        );
    insert
}

/// Records `events` (at most [`EVENTS_PER_STATEMENT`]) on PostgreSQL, each id once.
///
/// A batch seldom holds an event recorded before (only a replay does: a relay that stopped
/// before moving its cursor, a consumer group rebalanced before storing its offsets), so it is
/// first loaded with `COPY` through `bulk` ([`copy`]), the cheapest way in, which fails as a
/// whole on an id recorded before; only then is it inserted passing over those ids (`ON
/// CONFLICT`, which costs PostgreSQL a speculative insertion of every row).
async fn record_on_postgres(pool: &Pool, bulk: &sqlx::PgPool, events: &[Event]) -> Result<(), StoreError> {
    match copy::load(bulk, events).await {
        Err(StoreError::Database(sqlx::Error::Database(err))) if err.is_unique_violation() => {
            metrics::counter!("leaky_analytics_replayed_writes_total").increment(1);
            postgres_insert_passing_over_recorded(events).execute(pool).await?;
            Ok(())
        }
        result => result,
    }
}

impl AnalyticsSink for SqlAnalytics {
    fn record<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            // Each statement commits on its own: a batch cut short is published again, and the
            // rows it did write are then passed over by their event ids. One statement per
            // batch up to [`EVENTS_PER_STATEMENT`] is one round trip to the database.
            for chunk in events.chunks(EVENTS_PER_STATEMENT) {
                match self.backend {
                    Backend::Postgres => {
                        let bulk = self.bulk.as_ref().ok_or_else(|| {
                            StoreError::Corrupt("a PostgreSQL database without its bulk connections".into())
                        })?;
                        record_on_postgres(&self.pool, bulk, chunk).await?;
                    }
                    Backend::Sqlite => {
                        sqlite_insert(chunk).execute(&self.pool).await?;
                    }
                }
            }
            Ok(())
        })
    }

    fn report<'a>(&'a self, q: &'a ReportQuery) -> BoxFuture<'a, Result<Report, StoreError>> {
        Box::pin(async move {
            // The totals count every event recorded before the report.
            rollup::roll_up(&self.pool, self.backend).await?;
            let totals = usage(
                self.backend,
                "SELECT CAST(COALESCE(SUM(CASE WHEN outcome = 'allowed' THEN tokens END), 0) AS BIGINT) AS tokens, \
                 CAST(COALESCE(SUM(CASE WHEN outcome = 'allowed' THEN requests END), 0) AS BIGINT) AS requests, \
                 CAST(COALESCE(SUM(CASE WHEN outcome = 'rate_limited' THEN requests END), 0) AS BIGINT) \
                 AS rate_limited, \
                 CAST(COALESCE(SUM(CASE WHEN outcome = 'quota_rejected' THEN requests END), 0) AS BIGINT) \
                 AS quota_rejected",
                q,
            )
            .fetch_one(&self.readers)
            .await?;
            let totals = Totals {
                tokens: totals.try_get("tokens")?,
                requests: totals.try_get("requests")?,
                rate_limited: totals.try_get("rate_limited")?,
                quota_rejected: totals.try_get("quota_rejected")?,
            };
            // The bucket length is an integer chosen by the server, never user text.
            let bucket = q.bucket_ms.max(1);
            let select = format!(
                "SELECT (moment / {bucket}) * {bucket} AS start, CAST(SUM(tokens) AS BIGINT) AS tokens, \
                 CAST(SUM(requests) AS BIGINT) AS requests"
            );
            let mut series = usage(self.backend, &select, q);
            series.push(" WHERE outcome = 'allowed' GROUP BY start ORDER BY start");
            let series = series
                .fetch_all(&self.readers)
                .await?
                .iter()
                .map(|r| {
                    Ok(Bucket {
                        start: r.try_get("start")?,
                        tokens: r.try_get("tokens")?,
                        requests: r.try_get("requests")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut by_provider = usage(
                self.backend,
                "SELECT provider, CAST(SUM(tokens) AS BIGINT) AS tokens, CAST(SUM(requests) AS BIGINT) AS requests",
                q,
            );
            by_provider.push(" WHERE outcome = 'allowed' GROUP BY provider ORDER BY provider");
            let by_provider = by_provider
                .fetch_all(&self.readers)
                .await?
                .iter()
                .map(|r| {
                    Ok(ProviderTotal {
                        provider: r.try_get("provider")?,
                        tokens: r.try_get("tokens")?,
                        requests: r.try_get("requests")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Report { totals, series, by_provider })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn whole_hours_are_those_the_range_covers_from_start_to_end() {
        assert_eq!(whole_hours(0, 3 * H), Some((0, 3 * H)), "aligned at both ends");
        assert_eq!(whole_hours(1, 3 * H - 1), Some((H, 2 * H)), "a part hour at each end");
        assert_eq!(whole_hours(H - 1, 2 * H), Some((H, 2 * H)));
        assert_eq!(whole_hours(1, 2 * H - 1), None, "no hour covered whole");
        assert_eq!(whole_hours(H, 2 * H - 1), None);
        assert_eq!(whole_hours(-H - 1, H), Some((-H, H)), "before the epoch too");
    }

    fn report_text(q: &ReportQuery) -> String {
        usage(Backend::Postgres, "SELECT 1", q).text().to_string()
    }

    #[test]
    fn a_range_of_whole_hours_reads_events_only_at_its_ends_and_totals_between() {
        let q = ReportQuery { user_id: None, org_id: None, provider: None, from: 10, to: 3 * H + 5, bucket_ms: H };
        let text = report_text(&q);
        assert!(text.contains("UNION ALL SELECT hour_start"), "{text}");
        assert!(text.contains("(occurred_at >= $1 AND occurred_at < $2) OR (occurred_at >= $3 AND occurred_at < $4)"));
        assert!(text.contains("hour_start >= $5 AND hour_start < $6"), "{text}");
        let within = ReportQuery { from: 10, to: H - 5, ..q };
        assert!(!report_text(&within).contains("analytics_hourly"), "a range inside one hour reads only events");
    }
}
