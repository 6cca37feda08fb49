//! Organisations.

use sqlx::Row;

use uuid::Uuid;

use crate::{Pool, StoreError, now_ms};

/// A stored org.
#[derive(Clone, Debug)]
pub struct Org {
    /// The org's id.
    pub id: Uuid,
    /// Its unique name.
    pub name: String,
}

/// Creates an org; [`StoreError::Conflict`] when the name is taken.
pub async fn create(pool: &Pool, name: &str) -> Result<Org, StoreError> {
    let org = Org { id: Uuid::now_v7(), name: name.into() };
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(org.id.to_string())
        .bind(&org.name)
        .bind(now_ms())
        .execute(pool)
        .await
        .map_err(|e| StoreError::unique(e, "org name"))?;
    Ok(org)
}

/// The org with this id.
pub async fn by_id(pool: &Pool, id: Uuid) -> Result<Option<Org>, StoreError> {
    let row = sqlx::query("SELECT id, name FROM orgs WHERE id = $1").bind(id.to_string()).fetch_optional(pool).await?;
    row.map(|r| Ok(Org { id: crate::users::parse_uuid(&r.try_get::<String, _>("id")?)?, name: r.try_get("name")? }))
        .transpose()
}
