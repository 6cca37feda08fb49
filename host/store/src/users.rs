//! Users and their roles.

use sqlx::Row;

use uuid::Uuid;

use crate::{Pool, StoreError, now_ms};

/// A stored user.
#[derive(Clone, Debug)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// Unique login name.
    pub username: String,
    /// Unique email.
    pub email: String,
    /// The argon2id hash of the password (PHC string).
    pub password_hash: String,
    /// The org the user belongs to, if any.
    pub org_id: Option<Uuid>,
    /// Roles: `user`, `admin`, `service`.
    pub roles: Vec<String>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let id: String = row.try_get("id")?;
    let org: Option<String> = row.try_get("org_id")?;
    let roles: String = row.try_get("roles")?;
    Ok(User {
        id: parse_uuid(&id)?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        org_id: org.as_deref().map(parse_uuid).transpose()?,
        roles: roles.split(',').filter(|r| !r.is_empty()).map(String::from).collect(),
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn parse_uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("uuid {text:?}: {e}")))
}

/// Creates a user; [`StoreError::Conflict`] when the username or email is taken.
pub async fn create(
    pool: &Pool,
    username: &str,
    email: &str,
    password_hash: &str,
    roles: &[&str],
) -> Result<User, StoreError> {
    let user = User {
        id: Uuid::now_v7(),
        username: username.into(),
        email: email.into(),
        password_hash: password_hash.into(),
        org_id: None,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, roles, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user.id.to_string())
    .bind(&user.username)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.roles.join(","))
    .bind(user.created_at)
    .execute(pool)
    .await
    .map_err(|e| StoreError::unique(e, "username or email"))?;
    Ok(user)
}

/// The user with this username.
pub async fn by_username(pool: &Pool, username: &str) -> Result<Option<User>, StoreError> {
    let row = sqlx::query("SELECT * FROM users WHERE username = $1").bind(username).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// The user with this id.
pub async fn by_id(pool: &Pool, id: Uuid) -> Result<Option<User>, StoreError> {
    let row = sqlx::query("SELECT * FROM users WHERE id = $1").bind(id.to_string()).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// Replaces a user's roles; `None` when there is no such user.
pub async fn set_roles(pool: &Pool, id: Uuid, roles: &[String]) -> Result<Option<User>, StoreError> {
    sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
        .bind(roles.join(","))
        .bind(id.to_string())
        .execute(pool)
        .await?;
    by_id(pool, id).await
}

/// Puts a user in an org; `None` when there is no such user.
pub async fn set_org(pool: &Pool, id: Uuid, org: Uuid) -> Result<Option<User>, StoreError> {
    sqlx::query("UPDATE users SET org_id = $1 WHERE id = $2")
        .bind(org.to_string())
        .bind(id.to_string())
        .execute(pool)
        .await?;
    by_id(pool, id).await
}

/// Replaces a user's password hash.
pub async fn set_password(pool: &Pool, id: Uuid, password_hash: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    Ok(())
}
