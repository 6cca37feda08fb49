//! At start, the quota counters of the consumes the last run committed but did not write back
//! ([`PendingSpend`](super::PendingSpend)): tallied from their ledger rows and written back, with
//! `through_seq` moved past them, in one transaction.

use sqlx::Row;

use super::tally::{self, Tallies};
use super::writes::Writes;
use crate::users::parse_uuid;
use crate::{Backend, Pool, StoreError, now_ms};

/// Writes back the counters of the consume rows after `quota_writeback.through_seq` (SQLite);
/// returns how many rows it tallied.
pub(super) async fn replay(pool: &Pool) -> Result<u64, StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    let through: i64 =
        sqlx::query_scalar("SELECT through_seq FROM quota_writeback WHERE id = 1").fetch_one(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT seq, user_id, org_id, provider, cost, user_period_start, user_limit, org_period_start \
         FROM ledger WHERE seq > $1 AND kind = 'consume' ORDER BY seq",
    )
    .bind(through)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tallies = Tallies::default();
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        let lacking = |column: &str| StoreError::Corrupt(format!("ledger row {seq} has no {column} to write back"));
        let user = parse_uuid(&row.try_get::<String, _>("user_id")?)?;
        let org = row.try_get::<Option<String>, _>("org_id")?.as_deref().map(parse_uuid).transpose()?;
        let provider: String = row.try_get("provider")?;
        let cost: i64 = row.try_get::<Option<i64>, _>("cost")?.ok_or_else(|| lacking("cost"))?;
        let user_period_start: i64 =
            row.try_get::<Option<i64>, _>("user_period_start")?.ok_or_else(|| lacking("user period"))?;
        let user_limit: i64 = row.try_get::<Option<i64>, _>("user_limit")?.ok_or_else(|| lacking("user limit"))?;
        let org_period_start: Option<i64> = row.try_get("org_period_start")?;
        tallies.add(user, org.map(|id| (id, org_period_start)), &provider, user_period_start, user_limit, cost);
    }
    {
        let mut writes = Writes::Each { conn: &mut tx, backend: Backend::Sqlite };
        tally::write_back(&mut writes, &tallies, now_ms()).await?;
    }
    sqlx::query(tally::WRITTEN_BACK_THROUGH_LAST_ROW).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}
