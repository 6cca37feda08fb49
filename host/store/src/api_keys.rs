//! API keys. Only a hash of each secret is stored; the key is shown once, at creation.

use sqlx::Row;

use uuid::Uuid;

use crate::users::parse_uuid;
use crate::{Pool, StoreError, now_ms};

/// A stored API key (without its secret).
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// The key's id.
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// The owner's label for it.
    pub name: String,
    /// The first characters of the key, to recognise it in lists.
    pub prefix: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Expiry, ms, if any.
    pub expires_at: Option<i64>,
    /// Revocation time, ms, if revoked.
    pub revoked_at: Option<i64>,
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        user_id: parse_uuid(&row.try_get::<String, _>("user_id")?)?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Stores a new key by the hash of its secret.
pub async fn create(
    pool: &Pool,
    user_id: Uuid,
    name: &str,
    prefix: &str,
    secret_hash: &str,
    expires_at: Option<i64>,
) -> Result<ApiKey, StoreError> {
    let key = ApiKey {
        id: Uuid::now_v7(),
        user_id,
        name: name.into(),
        prefix: prefix.into(),
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
    };
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key.id.to_string())
    .bind(user_id.to_string())
    .bind(name)
    .bind(prefix)
    .bind(secret_hash)
    .bind(key.created_at)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(key)
}

/// A user's keys, newest first.
pub async fn list(pool: &Pool, user_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query("SELECT * FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC")
        .bind(user_id.to_string())
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The live (not revoked, not expired) key with this secret hash.
pub async fn live_by_hash(pool: &Pool, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query(
        "SELECT * FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(secret_hash)
    .bind(now_ms())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Revokes a key owned by `user_id`; `false` when there is no such live key of that user.
pub async fn revoke(pool: &Pool, user_id: Uuid, key_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(key_id.to_string())
        .bind(user_id.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
