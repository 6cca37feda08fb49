//! The analytics sink on Cassandra / ScyllaDB (`migrations/cassandra`), behind the same
//! [`AnalyticsSink`] trait as the SQL one and giving the same reports.
//!
//! Each event is written as one row per scope it belongs to, keyed by its id, so recording an
//! event again (a replayed topic) rewrites the same rows. A report reads the days a scope has
//! events, then those day partitions, and aggregates them here ([`aggregate`]).

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;

use crate::StoreError;
use crate::analytics::{AnalyticsSink, Bucket, ProviderTotal, Report, ReportQuery, Totals};
use crate::bus::BoxFuture;
use crate::events::Event;

const DAY_MS: i64 = 86_400_000;
const SCHEMA: &str = include_str!("../../../migrations/cassandra/0001_analytics.cql");

fn cql(err: impl std::fmt::Display) -> StoreError {
    StoreError::Analytics(err.to_string())
}

/// One stored row, as a report reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// When, ms since the epoch.
    pub occurred_at: i64,
    /// The org, as text, if any.
    pub org_id: Option<String>,
    /// The provider.
    pub provider: String,
    /// Tokens.
    pub tokens: i64,
    /// `allowed`, `rate_limited`, `quota_rejected` or `purchased`.
    pub outcome: String,
}

/// The report over `rows` that the SQL sink gives for the same events and query.
pub fn aggregate(rows: impl IntoIterator<Item = Row>, q: &ReportQuery) -> Report {
    use std::collections::BTreeMap;
    let bucket = q.bucket_ms.max(1);
    let org = q.org_id.map(|o| o.to_string());
    let mut totals = Totals::default();
    let mut series: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut providers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let in_range = row.occurred_at >= q.from && row.occurred_at < q.to;
        let org_matches = org.is_none() || row.org_id == org;
        let provider_matches = q.provider.as_ref().is_none_or(|p| *p == row.provider);
        if !(in_range && org_matches && provider_matches) {
            continue;
        }
        match row.outcome.as_str() {
            "allowed" => {
                totals.tokens += row.tokens;
                totals.requests += 1;
                let s = series.entry((row.occurred_at / bucket) * bucket).or_default();
                s.0 += row.tokens;
                s.1 += 1;
                let p = providers.entry(row.provider).or_default();
                p.0 += row.tokens;
                p.1 += 1;
            }
            "rate_limited" => totals.rate_limited += 1,
            "quota_rejected" => totals.quota_rejected += 1,
            _ => {}
        }
    }
    Report {
        totals,
        series: series.into_iter().map(|(start, (tokens, requests))| Bucket { start, tokens, requests }).collect(),
        by_provider: providers
            .into_iter()
            .map(|(provider, (tokens, requests))| ProviderTotal { provider, tokens, requests })
            .collect(),
    }
}

/// The scopes an event is recorded under.
fn scopes(event: &Event) -> Vec<String> {
    let mut scopes = vec![format!("user:{}", event.user_id), "all".to_string()];
    if let Some(org) = event.org_id {
        scopes.push(format!("org:{org}"));
    }
    scopes
}

/// The scope a report reads.
fn scope_of(q: &ReportQuery) -> String {
    match (q.user_id, q.org_id) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(org)) => format!("org:{org}"),
        (None, None) => "all".into(),
    }
}

/// The Cassandra sink.
pub struct CassandraAnalytics {
    session: Session,
    insert_event: PreparedStatement,
    insert_day: PreparedStatement,
    select_days: PreparedStatement,
    select_rows: PreparedStatement,
}

impl CassandraAnalytics {
    /// Connects to `nodes` (`host:port`, comma-separated), creates the keyspace (with
    /// `replication_factor`) and the tables when missing, and prepares the statements.
    pub async fn connect(nodes: &str, keyspace: &str, replication_factor: u32) -> Result<Self, StoreError> {
        if keyspace.is_empty() || !keyspace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StoreError::Analytics(format!("keyspace `{keyspace}` must be [A-Za-z0-9_]+")));
        }
        let mut builder = SessionBuilder::new();
        for node in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            builder = builder.known_node(node);
        }
        let session = builder.build().await.map_err(cql)?;
        let create = format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
        );
        session.query_unpaged(create, &[]).await.map_err(cql)?;
        session.use_keyspace(keyspace, false).await.map_err(cql)?;
        for statement in SCHEMA.split(';').map(strip_comments).filter(|s| !s.is_empty()) {
            session.query_unpaged(statement, &[]).await.map_err(cql)?;
        }
        let prepare = |text: &'static str| session.prepare(text);
        let insert_event = prepare(
            "INSERT INTO events_by_scope (scope, day, occurred_at, event_id, org_id, provider, tokens, outcome) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .await
        .map_err(cql)?;
        let insert_day = prepare("INSERT INTO scope_days (scope, day) VALUES (?, ?)").await.map_err(cql)?;
        let select_days =
            prepare("SELECT day FROM scope_days WHERE scope = ? AND day >= ? AND day <= ?").await.map_err(cql)?;
        let select_rows = prepare(
            "SELECT occurred_at, org_id, provider, tokens, outcome FROM events_by_scope \
             WHERE scope = ? AND day = ? AND occurred_at >= ? AND occurred_at < ?",
        )
        .await
        .map_err(cql)?;
        Ok(Self { session, insert_event, insert_day, select_days, select_rows })
    }
}

fn strip_comments(statement: &str) -> String {
    statement.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_string()
}

impl AnalyticsSink for CassandraAnalytics {
    fn record<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for event in events {
                let day = event.occurred_at.div_euclid(DAY_MS);
                let tokens = i64::try_from(event.tokens).unwrap_or(i64::MAX);
                let org = event.org_id.map(|o| o.to_string());
                let outcome = event.outcome.as_str();
                for scope in scopes(event) {
                    let values =
                        (&scope, day, event.occurred_at, event.id.to_string(), &org, &event.provider, tokens, outcome);
                    self.session.execute_unpaged(&self.insert_event, values).await.map_err(cql)?;
                    self.session.execute_unpaged(&self.insert_day, (&scope, day)).await.map_err(cql)?;
                }
            }
            Ok(())
        })
    }

    fn report<'a>(&'a self, q: &'a ReportQuery) -> BoxFuture<'a, Result<Report, StoreError>> {
        Box::pin(async move {
            let scope = scope_of(q);
            let (first, last) = (q.from.div_euclid(DAY_MS), (q.to - 1).div_euclid(DAY_MS));
            let days = self
                .session
                .execute_unpaged(&self.select_days, (&scope, first, last))
                .await
                .map_err(cql)?
                .into_rows_result()
                .map_err(cql)?;
            let days: Vec<i64> =
                days.rows::<(i64,)>().map_err(cql)?.map(|r| r.map(|(d,)| d)).collect::<Result<_, _>>().map_err(cql)?;
            let mut rows = Vec::new();
            for day in days {
                let result = self
                    .session
                    .execute_unpaged(&self.select_rows, (&scope, day, q.from, q.to))
                    .await
                    .map_err(cql)?
                    .into_rows_result()
                    .map_err(cql)?;
                for row in result.rows::<(i64, Option<String>, String, i64, String)>().map_err(cql)? {
                    let (occurred_at, org_id, provider, tokens, outcome) = row.map_err(cql)?;
                    rows.push(Row { occurred_at, org_id, provider, tokens, outcome });
                }
            }
            Ok(aggregate(rows, q))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use uuid::Uuid;

    fn row(at: i64, provider: &str, tokens: i64, outcome: Outcome, org: Option<&str>) -> Row {
        Row {
            occurred_at: at,
            org_id: org.map(String::from),
            provider: provider.into(),
            tokens,
            outcome: outcome.as_str().into(),
        }
    }

    #[test]
    fn aggregation_gives_the_sql_sinks_report() {
        let org = Uuid::now_v7();
        let o = org.to_string();
        let rows = vec![
            row(1_000, "openai", 5, Outcome::Allowed, Some(&o)),
            row(3_600_500, "openai", 7, Outcome::Allowed, Some(&o)),
            row(3_600_900, "anthropic", 2, Outcome::Allowed, None),
            row(3_601_000, "openai", 9, Outcome::RateLimited, Some(&o)),
            row(3_602_000, "openai", 9, Outcome::QuotaRejected, Some(&o)),
            row(3_603_000, "openai", 100, Outcome::Purchased, Some(&o)),
            row(99_000_000, "openai", 1, Outcome::Allowed, Some(&o)),
        ];
        let q =
            ReportQuery { user_id: None, org_id: None, provider: None, from: 0, to: 10_000_000, bucket_ms: 3_600_000 };
        let report = aggregate(rows.clone(), &q);
        assert_eq!(report.totals, Totals { tokens: 14, requests: 3, rate_limited: 1, quota_rejected: 1 });
        assert_eq!(
            report.series,
            vec![Bucket { start: 0, tokens: 5, requests: 1 }, Bucket { start: 3_600_000, tokens: 9, requests: 2 }]
        );
        assert_eq!(report.by_provider[0], ProviderTotal { provider: "anthropic".into(), tokens: 2, requests: 1 });
        assert_eq!(report.by_provider[1], ProviderTotal { provider: "openai".into(), tokens: 12, requests: 2 });

        let of_org = aggregate(rows.clone(), &ReportQuery { org_id: Some(org), ..q.clone() });
        assert_eq!(of_org.totals.tokens, 12, "the anthropic row has no org");
        let of_provider = aggregate(rows, &ReportQuery { provider: Some("anthropic".into()), ..q });
        assert_eq!(of_provider.totals.requests, 1);
    }

    #[test]
    fn an_event_is_recorded_under_its_user_its_org_and_all() {
        let event = Event {
            id: Uuid::now_v7(),
            outcome: Outcome::Allowed,
            user_id: Uuid::now_v7(),
            org_id: Some(Uuid::now_v7()),
            provider: "openai".into(),
            model: None,
            tokens: 1,
            occurred_at: 0,
        };
        let s = scopes(&event);
        assert_eq!(s.len(), 3);
        assert!(s.contains(&format!("user:{}", event.user_id)) && s.contains(&"all".to_string()));
        assert_eq!(strip_comments("-- a comment\nCREATE TABLE x (a int)\n"), "CREATE TABLE x (a int)");
    }
}
