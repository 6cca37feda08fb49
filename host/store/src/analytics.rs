//! The analytics sink: records events once each and answers usage reports.

use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use crate::StoreError;
use crate::bus::BoxFuture;
use crate::events::Event;

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
    pool: SqlitePool,
    readers: SqlitePool,
}

impl SqlAnalytics {
    /// A sink on this database.
    pub fn new(db: &crate::Database) -> Self {
        Self { pool: db.pool().clone(), readers: db.readers().clone() }
    }
}

fn filtered<'q>(select: &str, q: &'q ReportQuery) -> QueryBuilder<'q, Sqlite> {
    let mut b = QueryBuilder::new(select);
    b.push(" FROM analytics_events WHERE occurred_at >= ")
        .push_bind(q.from)
        .push(" AND occurred_at < ")
        .push_bind(q.to);
    if let Some(user) = q.user_id {
        b.push(" AND user_id = ").push_bind(user.to_string());
    }
    if let Some(org) = q.org_id {
        b.push(" AND org_id = ").push_bind(org.to_string());
    }
    if let Some(provider) = &q.provider {
        b.push(" AND provider = ").push_bind(provider.clone());
    }
    b
}

impl AnalyticsSink for SqlAnalytics {
    fn record<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            for chunk in events.chunks(2000) {
                let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT OR IGNORE INTO analytics_events (event_id, user_id, org_id, provider, model, tokens, outcome, occurred_at) ",
                );
                insert.push_values(chunk, |mut row, e| {
                    row.push_bind(e.id.to_string())
                        .push_bind(e.user_id.to_string())
                        .push_bind(e.org_id.map(|o| o.to_string()))
                        .push_bind(e.provider.clone())
                        .push_bind(e.model.clone())
                        .push_bind(i64::try_from(e.tokens).unwrap_or(i64::MAX))
                        .push_bind(e.outcome.as_str())
                        .push_bind(e.occurred_at);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn report<'a>(&'a self, q: &'a ReportQuery) -> BoxFuture<'a, Result<Report, StoreError>> {
        Box::pin(async move {
            let totals = filtered(
                "SELECT COALESCE(SUM(CASE WHEN outcome = 'allowed' THEN tokens END), 0) AS tokens, \
                 COALESCE(SUM(outcome = 'allowed'), 0) AS requests, \
                 COALESCE(SUM(outcome = 'rate_limited'), 0) AS rate_limited, \
                 COALESCE(SUM(outcome = 'quota_rejected'), 0) AS quota_rejected",
                q,
            )
            .build()
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
                "SELECT (occurred_at / {bucket}) * {bucket} AS start, SUM(tokens) AS tokens, COUNT(*) AS requests"
            );
            let mut series = filtered(&select, q);
            series.push(" AND outcome = 'allowed' GROUP BY start ORDER BY start");
            let series = series
                .build()
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
            let mut by_provider = filtered("SELECT provider, SUM(tokens) AS tokens, COUNT(*) AS requests", q);
            by_provider.push(" AND outcome = 'allowed' GROUP BY provider ORDER BY provider");
            let by_provider = by_provider
                .build()
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
