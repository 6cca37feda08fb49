//! Quotas: how many tokens an owner (a user or an org) may spend per provider and period.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use uuid::Uuid;

use crate::users::parse_uuid;
use crate::{Database, Pool, StoreError, now_ms};

/// Who a quota belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerType {
    /// One user.
    User,
    /// An org, shared by its members.
    Org,
}

impl OwnerType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Org => "org",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "user" => Ok(Self::User),
            "org" => Ok(Self::Org),
            other => Err(StoreError::Corrupt(format!("owner type {other:?}"))),
        }
    }
}

/// When `used` starts again from zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Never: a lifetime allowance.
    None,
    /// At 00:00 UTC every day.
    Daily,
    /// At 00:00 UTC on the first of every month.
    Monthly,
}

const DAY_MS: i64 = 86_400_000;

impl Period {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "none" => Ok(Self::None),
            "daily" => Ok(Self::Daily),
            "monthly" => Ok(Self::Monthly),
            other => Err(StoreError::Corrupt(format!("period {other:?}"))),
        }
    }

    /// Start of the period holding `now_ms` (0 for [`Period::None`]).
    pub fn start(self, now_ms: i64) -> i64 {
        match self {
            Self::None => 0,
            Self::Daily => now_ms - now_ms.rem_euclid(DAY_MS),
            Self::Monthly => month_start(now_ms),
        }
    }

    /// When the period that started at `start` ends (`None` for [`Period::None`]).
    pub fn end(self, start: i64) -> Option<i64> {
        match self {
            Self::None => None,
            Self::Daily => Some(start + DAY_MS),
            Self::Monthly => Some(month_start(start + 32 * DAY_MS)),
        }
    }
}

fn month_start(ms: i64) -> i64 {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else { return 0 };
    let first = at.date().replace_day(1).unwrap_or(at.date());
    first.midnight().assume_utc().unix_timestamp() * 1000
}

/// One quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// User or org.
    pub owner_type: OwnerType,
    /// The user's or org's id.
    pub owner_id: Uuid,
    /// The provider it applies to.
    pub provider: String,
    /// Tokens allowed per period.
    pub limit: i64,
    /// Tokens spent in the current period.
    pub used: i64,
    /// The reset period.
    pub period: Period,
    /// Start of the period `used` counts, ms.
    pub period_start: i64,
}

impl Quota {
    /// Starts a new period when `now_ms` is past the current one.
    pub fn roll(&mut self, now_ms: i64) {
        let start = self.period.start(now_ms);
        if start > self.period_start {
            self.used = 0;
            self.period_start = start;
        }
    }

    /// Takes in what the database holds (`limit`, `used`, in the period starting at
    /// `period_start`), written by this process or another: the limit as stored, and the
    /// larger of the two counts (this process's count includes reservations not committed
    /// yet; the stored one includes other processes' spending). A stored period older than
    /// this one says nothing about it.
    pub fn adopt(&mut self, limit: i64, used: i64, period_start: i64) {
        if period_start < self.period_start {
            return;
        }
        if period_start > self.period_start {
            self.period_start = period_start;
            self.used = used;
        } else {
            self.used = self.used.max(used);
        }
        self.limit = limit;
    }

    /// Tokens left in the current period.
    pub fn remaining(&self) -> i64 {
        (self.limit - self.used).max(0)
    }

    /// When the current period ends, if it ever does.
    pub fn reset_at(&self) -> Option<i64> {
        self.period.end(self.period_start)
    }
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Quota, StoreError> {
    Ok(Quota {
        owner_type: OwnerType::parse(&row.try_get::<String, _>("owner_type")?)?,
        owner_id: parse_uuid(&row.try_get::<String, _>("owner_id")?)?,
        provider: row.try_get("provider")?,
        limit: row.try_get("quota_limit")?,
        used: row.try_get("used")?,
        period: Period::parse(&row.try_get::<String, _>("period")?)?,
        period_start: row.try_get("period_start")?,
    })
}

/// The quota of an owner for a provider as the ledger has it: the stored row, with the spend
/// committed since the last write-back of the counters added
/// ([`PendingSpend`](crate::ledger::PendingSpend)).
pub async fn get(db: &Database, owner: OwnerType, owner_id: Uuid, provider: &str) -> Result<Option<Quota>, StoreError> {
    db.pending()
        .read(
            || stored(db.readers(), owner, owner_id, provider),
            |pending, quota| pending.overlay(owner, owner_id, provider, quota),
        )
        .await
}

/// The quota row as stored, without spend pending write-back.
async fn stored(pool: &Pool, owner: OwnerType, owner_id: Uuid, provider: &str) -> Result<Option<Quota>, StoreError> {
    let row = sqlx::query("SELECT * FROM quotas WHERE owner_type = $1 AND owner_id = $2 AND provider = $3")
        .bind(owner.as_str())
        .bind(owner_id.to_string())
        .bind(provider)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Sets the limit and period of a quota, creating it if needed; `used` is kept (a new period
/// starts now, counting what was used so far).
pub async fn put(
    db: &Database,
    owner: OwnerType,
    owner_id: Uuid,
    provider: &str,
    limit: i64,
    period: Period,
) -> Result<Quota, StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7) \
         ON CONFLICT (owner_type, owner_id, provider) DO UPDATE SET quota_limit = $4, period = $5, updated_at = $7, \
         period_start = CASE WHEN quotas.period = $5 THEN quotas.period_start ELSE $6 END",
    )
    .bind(owner.as_str())
    .bind(owner_id.to_string())
    .bind(provider)
    .bind(limit)
    .bind(period.as_str())
    .bind(period.start(now))
    .bind(now)
    .execute(db.pool())
    .await?;
    get(db, owner, owner_id, provider).await?.ok_or_else(|| StoreError::Corrupt("quota vanished after upsert".into()))
}

/// Every quota of an owner, with the spend pending write-back added (as [`get`]).
pub async fn list(db: &Database, owner: OwnerType, owner_id: Uuid) -> Result<Vec<Quota>, StoreError> {
    let read = || async {
        let rows = sqlx::query("SELECT * FROM quotas WHERE owner_type = $1 AND owner_id = $2 ORDER BY provider")
            .bind(owner.as_str())
            .bind(owner_id.to_string())
            .fetch_all(db.readers())
            .await?;
        rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()
    };
    db.pending()
        .read(read, |pending, mut quotas| {
            for quota in &mut quotas {
                pending.add_to(quota);
            }
            // A first spend not written back yet has no row.
            for provider in pending.providers(owner, owner_id) {
                if !quotas.iter().any(|q| q.provider == provider) {
                    quotas.extend(pending.overlay(owner, owner_id, provider, None));
                }
            }
            quotas.sort_by(|a, b| a.provider.cmp(&b.provider));
            quotas
        })
        .await
}

/// Raises a quota's limit by `tokens` (a purchase).
pub(crate) async fn add_limit(
    conn: &mut sqlx::AnyConnection,
    owner_id: Uuid,
    provider: &str,
    tokens: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE quotas SET quota_limit = quota_limit + $1, updated_at = $2 WHERE owner_type = 'user' AND owner_id = $3 AND provider = $4",
    )
    .bind(tokens)
    .bind(now_ms())
    .bind(owner_id.to_string())
    .bind(provider)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-29T17:31:03Z
    const NOW: i64 = 1_795_973_463_000;

    #[test]
    fn periods_start_at_midnight_utc_and_on_the_first_of_the_month() {
        assert_eq!(Period::None.start(NOW), 0);
        assert_eq!(Period::None.end(0), None);
        let day = Period::Daily.start(NOW);
        assert_eq!(day, 1_795_910_400_000); // 2026-11-29T00:00:00Z
        assert_eq!(Period::Daily.end(day), Some(day + DAY_MS));
        let month = Period::Monthly.start(NOW);
        assert_eq!(month, 1_793_491_200_000); // 2026-11-01T00:00:00Z
        assert_eq!(Period::Monthly.end(month), Some(1_796_083_200_000)); // 2026-12-01T00:00:00Z
    }

    fn seven_of_ten_today() -> Quota {
        Quota {
            owner_type: OwnerType::User,
            owner_id: Uuid::nil(),
            provider: "openai".into(),
            limit: 10,
            used: 7,
            period: Period::Daily,
            period_start: Period::Daily.start(NOW),
        }
    }

    #[test]
    fn rolling_into_a_new_period_starts_used_from_zero() {
        let mut q = seven_of_ten_today();
        q.roll(NOW + 1000);
        assert_eq!(q.used, 7, "same day");
        q.roll(NOW + DAY_MS);
        assert_eq!((q.used, q.period_start), (0, Period::Daily.start(NOW) + DAY_MS));
        assert_eq!(q.remaining(), 10);
    }

    #[test]
    fn adopting_the_stored_standing_keeps_the_larger_count_and_the_stored_limit() {
        let start = Period::Daily.start(NOW);
        let mut q = seven_of_ten_today();
        q.adopt(12, 5, start);
        assert_eq!((q.limit, q.used), (12, 7), "this process's count includes its reservations");
        q.adopt(12, 9, start);
        assert_eq!(q.used, 9, "another process spent more");
        q.adopt(50, 40, start - DAY_MS);
        assert_eq!((q.limit, q.used), (12, 9), "an older period says nothing");
        q.adopt(12, 1, start + DAY_MS);
        assert_eq!((q.used, q.period_start), (1, start + DAY_MS), "a newer period replaces the count");
    }
}
