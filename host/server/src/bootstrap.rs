//! Making admins: `leaky admin create` and `LEAKY_BOOTSTRAP_ADMIN=user:password` at start.

use leaky_store::Pool;
use leaky_store::{StoreError, users};

use crate::auth::hash_password;
use crate::routes::validate;
use crate::state::AppState;

/// Creates an admin, or makes an existing user an admin (keeping its other roles) and sets its
/// password. Returns the user id.
pub async fn create_admin(pool: &Pool, username: &str, password: &str) -> anyhow::Result<uuid::Uuid> {
    validate::username(username).map_err(|e| anyhow::anyhow!("{e}"))?;
    validate::password(password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = hash_password(password.to_string()).await?;
    // Replicas starting together each bootstrap the same admin: one creates it, the others find
    // it taken and make the existing user an admin instead.
    for _ in 0..2 {
        if let Some(user) = users::by_username(pool, username).await? {
            let mut roles = user.roles.clone();
            if !roles.iter().any(|r| r == "admin") {
                roles.push("admin".into());
            }
            users::set_roles(pool, user.id, &roles).await?;
            users::set_password(pool, user.id, &hash).await?;
            return Ok(user.id);
        }
        let email = format!("{username}@admin.invalid");
        match users::create(pool, username, &email, &hash, &["user", "admin"]).await {
            Ok(user) => return Ok(user.id),
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    anyhow::bail!("cannot create the admin {username}: {username}@admin.invalid is another user's email")
}

/// Honours `LEAKY_BOOTSTRAP_ADMIN=user:password`.
pub async fn admin_from_env(state: &AppState) -> anyhow::Result<()> {
    // Unset or empty (as a compose file passes an unset variable) means no bootstrap admin.
    let Some(value) = std::env::var("LEAKY_BOOTSTRAP_ADMIN").ok().filter(|v| !v.is_empty()) else { return Ok(()) };
    let (username, password) =
        value.split_once(':').ok_or_else(|| anyhow::anyhow!("LEAKY_BOOTSTRAP_ADMIN must be user:password"))?;
    let id = create_admin(state.db.pool(), username, password).await?;
    tracing::info!(%username, user_id = %id, "bootstrap admin ready");
    Ok(())
}
