//! Purchases: idempotency keys, the purchase saga's persisted steps, and the embedded payment
//! provider's book.
//!
//! Every step's effect and the record that it happened are written in one transaction, so a
//! saga resumed after a crash redoes nothing: a payment is captured at most once per purchase
//! (unique per purchase), and a credit at most once (its ledger entry id is the purchase id).

use serde::Serialize;
use sqlx::Row;

use uuid::Uuid;

use crate::events::{Event, Outcome};
use crate::ledger::insert_event;
use crate::quotas;
use crate::users::parse_uuid;
use crate::{Pool, StoreError, now_ms};

/// What claiming an idempotency key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and now held by this request.
    New,
    /// The key finished before with the same request: replay this answer.
    Replay {
        /// HTTP status of the first answer.
        status: u16,
        /// Body of the first answer.
        body: String,
    },
    /// A request with this key is still running.
    Running,
    /// The key was used with a different request.
    Mismatch,
}

/// Claims `(user, key)` for a request whose canonical form hashes to `request_hash`.
pub async fn claim(pool: &Pool, user: Uuid, key: &str, request_hash: &str) -> Result<Claim, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, state, created_at) VALUES ($1, $2, $3, 'running', $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(user.to_string())
    .bind(key)
    .bind(request_hash)
    .bind(now_ms())
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query(
        "SELECT request_hash, state, status_code, response FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user.to_string())
    .bind(key)
    .fetch_one(pool)
    .await?;
    let hash: String = row.try_get("request_hash")?;
    if hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    let state: String = row.try_get("state")?;
    if state == "running" {
        return Ok(Claim::Running);
    }
    let status: i64 = row.try_get::<Option<i64>, _>("status_code")?.unwrap_or(500);
    Ok(Claim::Replay {
        status: u16::try_from(status).unwrap_or(500),
        body: row.try_get::<Option<String>, _>("response")?.unwrap_or_default(),
    })
}

/// Stores the answer of a claimed key.
pub async fn finish(pool: &Pool, user: Uuid, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', status_code = $1, response = $2 WHERE user_id = $3 AND key = $4",
    )
    .bind(i64::from(status))
    .bind(body)
    .bind(user.to_string())
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ties a claimed key to the purchase it started, so a restart can finish both.
pub async fn attach(pool: &Pool, user: Uuid, key: &str, purchase: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE idempotency_keys SET purchase_id = $1 WHERE user_id = $2 AND key = $3")
        .bind(purchase.to_string())
        .bind(user.to_string())
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Keys still `running` (left by a crash): `(user, key, purchase it started, if any)`.
pub async fn running_keys(pool: &Pool) -> Result<Vec<(Uuid, String, Option<Uuid>)>, StoreError> {
    let rows = sqlx::query("SELECT user_id, key, purchase_id FROM idempotency_keys WHERE state = 'running'")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            let purchase: Option<String> = r.try_get("purchase_id")?;
            Ok((
                parse_uuid(&r.try_get::<String, _>("user_id")?)?,
                r.try_get("key")?,
                purchase.as_deref().map(parse_uuid).transpose()?,
            ))
        })
        .collect()
}

/// Releases a claimed key whose request failed before doing anything, so it can be retried.
pub async fn release(pool: &Pool, user: Uuid, key: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND state = 'running'")
        .bind(user.to_string())
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// A purchase and the steps its saga has taken.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purchase {
    /// The purchase id.
    pub purchase_id: Uuid,
    /// Who buys.
    pub user_id: Uuid,
    /// For which provider.
    pub provider: String,
    /// How many tokens.
    pub tokens: i64,
    /// `PENDING`, `COMPLETED` or `FAILED`.
    pub status: String,
    /// Created, ms.
    #[serde(skip)]
    pub created_at: i64,
    /// The saga's steps so far.
    pub steps: Vec<SagaStep>,
}

/// One saga step's record.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStep {
    /// The step's name.
    pub step: String,
    /// `DONE`, `COMPENSATED` or `FAILED`.
    pub status: String,
    /// What happened, for people.
    pub detail: Option<String>,
}

/// Records a new purchase as `PENDING`.
pub async fn create(pool: &Pool, id: Uuid, user: Uuid, provider: &str, tokens: i64) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query("INSERT INTO purchases (id, user_id, provider, tokens, status, created_at, updated_at) VALUES ($1, $2, $3, $4, 'PENDING', $5, $6)")
        .bind(id.to_string())
        .bind(user.to_string())
        .bind(provider)
        .bind(tokens)
        .bind(now)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// A purchase with its steps.
pub async fn get(pool: &Pool, id: Uuid) -> Result<Option<Purchase>, StoreError> {
    let Some(row) =
        sqlx::query("SELECT * FROM purchases WHERE id = $1").bind(id.to_string()).fetch_optional(pool).await?
    else {
        return Ok(None);
    };
    // In the saga's order (steps written in one millisecond have equal times).
    let steps = sqlx::query(
        "SELECT step, status, detail FROM saga_steps WHERE purchase_id = $1 ORDER BY \
         CASE step WHEN 'capture_payment' THEN 1 WHEN 'credit_quota' THEN 2 WHEN 'complete' THEN 3 ELSE 4 END, \
         updated_at, step",
    )
    .bind(id.to_string())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok(SagaStep { step: r.try_get("step")?, status: r.try_get("status")?, detail: r.try_get("detail")? }))
    .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Purchase {
        purchase_id: id,
        user_id: parse_uuid(&row.try_get::<String, _>("user_id")?)?,
        provider: row.try_get("provider")?,
        tokens: row.try_get("tokens")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        steps,
    }))
}

/// Purchases whose saga has not finished (to resume after a restart).
pub async fn pending(pool: &Pool) -> Result<Vec<Uuid>, StoreError> {
    let rows =
        sqlx::query("SELECT id FROM purchases WHERE status = 'PENDING' ORDER BY created_at").fetch_all(pool).await?;
    rows.iter().map(|r| parse_uuid(&r.try_get::<String, _>("id")?)).collect()
}

/// Whether a step has a record (of any status).
pub async fn step_status(pool: &Pool, id: Uuid, step: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT status FROM saga_steps WHERE purchase_id = $1 AND step = $2")
        .bind(id.to_string())
        .bind(step)
        .fetch_optional(pool)
        .await?)
}

async fn record_step(
    conn: &mut sqlx::AnyConnection,
    id: Uuid,
    step: &str,
    status: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO saga_steps (purchase_id, step, status, detail, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (purchase_id, step) DO UPDATE SET status = excluded.status, detail = excluded.detail, updated_at = excluded.updated_at",
    )
    .bind(id.to_string())
    .bind(step)
    .bind(status)
    .bind(detail)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Step `capture_payment`: the embedded provider books the payment, once per purchase.
pub async fn capture_payment(pool: &Pool, id: Uuid, tokens: i64) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    sqlx::query(
        "INSERT INTO payments (id, purchase_id, tokens, status, created_at) VALUES ($1, $2, $3, 'CAPTURED', $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(id.to_string())
    .bind(tokens)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    record_step(&mut tx, id, "capture_payment", "DONE", "payment captured by the embedded provider").await?;
    tx.commit().await?;
    Ok(())
}

/// Compensation of `capture_payment`: refunds the payment.
pub async fn refund_payment(pool: &Pool, id: Uuid, reason: &str) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    sqlx::query("UPDATE payments SET status = 'REFUNDED' WHERE purchase_id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    record_step(&mut tx, id, "capture_payment", "COMPENSATED", reason).await?;
    tx.commit().await?;
    Ok(())
}

/// Step `credit_quota`: raises the user's quota, writes the ledger credit and the purchase
/// event, all in one transaction. The ledger entry id is the purchase id, so a second credit
/// of the same purchase cannot commit.
/// `base_limit` is the user's limit to store first if its quota has no row yet.
pub async fn credit_quota(
    pool: &Pool,
    purchase: &Purchase,
    org_id: Option<Uuid>,
    base_limit: i64,
) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO quotas (owner_type, owner_id, provider, quota_limit, used, period, period_start, updated_at) \
         VALUES ('user', $1, $2, $3, 0, 'none', 0, $4) ON CONFLICT DO NOTHING",
    )
    .bind(purchase.user_id.to_string())
    .bind(&purchase.provider)
    .bind(base_limit)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger (entry_id, kind, user_id, org_id, provider, tokens, request_id, created_at) VALUES ($1, 'purchase', $2, $3, $4, $5, NULL, $6)",
    )
    .bind(purchase.purchase_id.to_string())
    .bind(purchase.user_id.to_string())
    .bind(org_id.map(|o| o.to_string()))
    .bind(&purchase.provider)
    .bind(purchase.tokens)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    quotas::add_limit(&mut tx, purchase.user_id, &purchase.provider, purchase.tokens).await?;
    let event = Event {
        id: purchase.purchase_id,
        outcome: Outcome::Purchased,
        user_id: purchase.user_id,
        org_id,
        provider: purchase.provider.clone(),
        model: None,
        tokens: u64::try_from(purchase.tokens).unwrap_or(0),
        occurred_at: now,
    };
    insert_event(&mut tx, &event).await?;
    record_step(&mut tx, purchase.purchase_id, "credit_quota", "DONE", "quota limit raised").await?;
    tx.commit().await?;
    Ok(())
}

/// Ends the saga: `COMPLETED` or `FAILED`, with a final step record.
pub async fn finish_saga(pool: &Pool, id: Uuid, status: &str, detail: &str) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    sqlx::query("UPDATE purchases SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(status)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    record_step(&mut tx, id, "complete", if status == "COMPLETED" { "DONE" } else { "FAILED" }, detail).await?;
    tx.commit().await?;
    Ok(())
}
