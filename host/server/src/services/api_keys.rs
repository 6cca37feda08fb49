//! API key authentication with a cache in front of the database. Revoking a key or changing a
//! user's roles drops the cached entries at once, so a revoked key stops working immediately.

use dashmap::DashMap;
use leaky_store::Pool;
use uuid::Uuid;

use crate::auth::{Caller, hash_secret, parse_key};
use crate::error::ApiError;
use leaky_store::{api_keys, users};

/// A cached, verified key.
#[derive(Clone)]
struct Verified {
    key_id: Uuid,
    caller: Caller,
    expires_at: Option<i64>,
}

/// Authenticates API keys.
pub struct ApiKeys {
    pool: Pool,
    cache: DashMap<String, Verified>,
}

impl ApiKeys {
    /// A service over the database.
    pub fn new(pool: Pool) -> Self {
        Self { pool, cache: DashMap::new() }
    }

    /// The caller a key belongs to; `None` for unknown, revoked or expired keys.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Caller>, ApiError> {
        if parse_key(key).is_none() {
            return Ok(None);
        }
        let hash = hash_secret(key);
        let now = leaky_store::now_ms();
        if let Some(hit) = self.cache.get(&hash)
            && hit.expires_at.is_none_or(|at| at > now)
        {
            return Ok(Some(hit.caller.clone()));
        }
        let Some(stored) = api_keys::live_by_hash(&self.pool, &hash).await? else { return Ok(None) };
        let Some(user) = users::by_id(&self.pool, stored.user_id).await? else { return Ok(None) };
        let caller = Caller { user_id: user.id, roles: user.roles };
        self.cache.insert(hash, Verified { key_id: stored.id, caller: caller.clone(), expires_at: stored.expires_at });
        Ok(Some(caller))
    }

    /// Revokes a key of `user`; `false` when it is not one of theirs.
    pub async fn revoke(&self, user: Uuid, key_id: Uuid) -> Result<bool, ApiError> {
        let revoked = api_keys::revoke(&self.pool, user, key_id).await?;
        self.cache.retain(|_, v| v.key_id != key_id);
        Ok(revoked)
    }

    /// Drops every cached key of a user (after a change of roles).
    pub fn forget_user(&self, user: Uuid) {
        self.cache.retain(|_, v| v.caller.user_id != user);
    }
}
