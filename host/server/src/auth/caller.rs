//! Who is calling: the [`Caller`] extractor, from `Authorization: Bearer <jwt>` or
//! `X-Api-Key: <key>`. Missing or bad credentials are 401; the routes decide 403.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// A role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An ordinary user.
    User,
    /// An operator.
    Admin,
    /// A trusted gateway that may act for any user.
    Service,
}

impl Role {
    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The caller's user id.
    pub user_id: Uuid,
    /// The caller's roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// Whether the caller has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| Role::parse(r) == Some(role))
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }

    /// The caller may act on `user`'s data: it is that user, an admin, or a service.
    pub fn may_act_for(&self, user: Uuid) -> Result<(), ApiError> {
        if self.user_id == user || self.is_admin() || self.has(Role::Service) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("you may act only on your own user id"))
        }
    }

    /// The caller may read `user`'s data (admins and services too).
    pub fn may_read(&self, user: Uuid) -> Result<(), ApiError> {
        self.may_act_for(user)
    }

    /// Only admins pass.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::Forbidden("this needs the admin role")) }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .ok_or(ApiError::Unauthenticated("the Authorization header must be `Bearer <token>`"))?;
            let claims = state.jwt.verify(token.trim()).ok_or(ApiError::Unauthenticated("invalid or expired token"))?;
            return Ok(Caller { user_id: claims.sub, roles: claims.roles.clone() });
        }
        if let Some(value) = parts.headers.get("x-api-key") {
            let key = value.to_str().map_err(|_| ApiError::Unauthenticated("invalid API key"))?;
            return state.api_keys.authenticate(key.trim()).await?.ok_or(ApiError::Unauthenticated("invalid API key"));
        }
        Err(ApiError::Unauthenticated("authentication required: send a Bearer token or an X-Api-Key"))
    }
}
