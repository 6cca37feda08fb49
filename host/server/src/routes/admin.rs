//! Admin routes: orgs, members, quotas, roles.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::routes::auth::UserView;
use crate::routes::validate;
use crate::state::AppState;
use leaky_store::quotas::{self, OwnerType, Period, Quota};
use leaky_store::{orgs, users};

/// `POST /orgs` body.
#[derive(Deserialize, ToSchema)]
pub struct OrgBody {
    /// 1-100 characters, unique.
    pub name: String,
}

/// An org.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    /// The org's id.
    pub org_id: Uuid,
    /// Its name.
    pub name: String,
}

/// Create an org (admin).
#[utoipa::path(post, path = "/api/v1/orgs", tag = "admin", request_body = OrgBody, security(("bearer" = []), ("apiKey" = [])),
    responses((status = 201, body = OrgView), (status = 403, description = "not an admin"), (status = 409, description = "name taken")))]
pub async fn create_org(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<OrgBody>,
) -> Result<(StatusCode, axum::Json<OrgView>), ApiError> {
    caller.require_admin()?;
    let name = validate::label(&body.name)?;
    let org = orgs::create(state.db.pool(), name).await?;
    Ok((StatusCode::CREATED, axum::Json(OrgView { org_id: org.id, name: org.name })))
}

/// `POST /orgs/{orgId}/members` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberBody {
    /// The user to add.
    pub user_id: Uuid,
}

/// Put a user in an org (admin). A user is in at most one org.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/members", tag = "admin", request_body = MemberBody, security(("bearer" = []), ("apiKey" = [])),
    params(("org_id" = Uuid, Path, description = "the org")),
    responses((status = 204), (status = 403, description = "not an admin"), (status = 404, description = "no such org or user")))]
pub async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<MemberBody>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    orgs::by_id(state.db.pool(), org_id).await?.ok_or(ApiError::NotFound("org"))?;
    users::set_org(state.db.pool(), body.user_id, org_id).await?.ok_or(ApiError::NotFound("user"))?;
    state.accounts.forget_user(body.user_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /quotas` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaBody {
    /// `user` or `org`.
    #[schema(value_type = String)]
    pub owner_type: OwnerType,
    /// The user's or org's id.
    pub owner_id: Uuid,
    /// The provider.
    pub provider: String,
    /// Tokens per period (0 to 10^15).
    pub limit: i64,
    /// `none`, `daily` or `monthly`.
    #[schema(value_type = String)]
    pub period: Period,
}

/// A quota.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    /// `user` or `org`.
    pub owner_type: &'static str,
    /// Owner id.
    pub owner_id: Uuid,
    /// Provider.
    pub provider: String,
    /// Limit per period.
    pub limit: i64,
    /// Spent in the period.
    pub used: i64,
    /// Left in the period.
    pub remaining: i64,
    /// `none`, `daily` or `monthly`.
    pub period: &'static str,
    /// When the period resets, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<String>,
}

fn view(q: &Quota) -> QuotaView {
    QuotaView {
        owner_type: q.owner_type.as_str(),
        owner_id: q.owner_id,
        provider: q.provider.clone(),
        limit: q.limit,
        used: q.used,
        remaining: q.remaining(),
        period: q.period.as_str(),
        reset_at: q.reset_at().map(validate::rfc3339),
    }
}

/// Set a quota's limit and period (admin); what was used is kept.
#[utoipa::path(put, path = "/api/v1/quotas", tag = "admin", request_body = QuotaBody, security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = QuotaView), (status = 400, description = "invalid input"), (status = 403, description = "not an admin"), (status = 404, description = "no such owner")))]
pub async fn put_quota(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<QuotaBody>,
) -> Result<axum::Json<QuotaView>, ApiError> {
    caller.require_admin()?;
    validate::provider(&body.provider)?;
    if !(0..=1_000_000_000_000_000).contains(&body.limit) {
        return Err(ApiError::InvalidRequest("limit must be between 0 and 10^15".into()));
    }
    let exists = match body.owner_type {
        OwnerType::User => users::by_id(state.db.pool(), body.owner_id).await?.is_some(),
        OwnerType::Org => orgs::by_id(state.db.pool(), body.owner_id).await?.is_some(),
    };
    if !exists {
        return Err(ApiError::NotFound(body.owner_type.as_str()));
    }
    if body.owner_type == OwnerType::User {
        // Load the account first so the in-memory copy and the database agree on `used`.
        state.accounts.account(body.owner_id, &body.provider).await?;
    }
    // Spend pending write-back is counted in the period it was decided in; written back after a
    // change of period, it would no longer count.
    state.consume.ledger().write_back().await?;
    let quota = quotas::put(&state.db, body.owner_type, body.owner_id, &body.provider, body.limit, body.period).await?;
    state.accounts.apply_quota(&quota).await?;
    Ok(axum::Json(view(&quota)))
}

/// `GET /quotas` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct QuotaListQuery {
    /// `user` or `org`.
    #[param(value_type = String)]
    pub owner_type: OwnerType,
    /// The owner.
    pub owner_id: Uuid,
}

/// An owner's quotas (admin).
#[utoipa::path(get, path = "/api/v1/quotas", tag = "admin", params(QuotaListQuery), security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = [QuotaView]), (status = 403, description = "not an admin")))]
pub async fn list_quotas(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QuotaListQuery>,
) -> Result<axum::Json<Vec<QuotaView>>, ApiError> {
    caller.require_admin()?;
    let mut list = quotas::list(&state.db, q.owner_type, q.owner_id).await?;
    // The in-memory book is ahead of the database by the debits being committed right now.
    for quota in &mut list {
        if quota.owner_type == OwnerType::User {
            let cell = state.accounts.account(quota.owner_id, &quota.provider).await?;
            quota.used = crate::services::accounts::lock(&cell).quota.used;
        }
    }
    Ok(axum::Json(list.iter().map(view).collect()))
}

/// `PUT /users/{userId}/roles` body.
#[derive(Deserialize, ToSchema)]
pub struct RolesBody {
    /// Any of `user`, `admin`, `service`.
    pub roles: Vec<String>,
}

/// Replace a user's roles (admin). Tokens already issued keep their roles until they expire;
/// API keys follow the change at once.
#[utoipa::path(put, path = "/api/v1/users/{user_id}/roles", tag = "admin", request_body = RolesBody, security(("bearer" = []), ("apiKey" = [])),
    params(("user_id" = Uuid, Path, description = "the user")),
    responses((status = 200, body = UserView), (status = 400, description = "unknown role"), (status = 403, description = "not an admin"), (status = 404, description = "no such user")))]
pub async fn set_roles(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<Uuid>,
    Json(body): Json<RolesBody>,
) -> Result<axum::Json<UserView>, ApiError> {
    caller.require_admin()?;
    if body.roles.is_empty() || body.roles.iter().any(|r| Role::parse(r).is_none()) {
        return Err(ApiError::InvalidRequest("roles must be a non-empty list of user, admin, service".into()));
    }
    let mut roles = body.roles.clone();
    roles.sort();
    roles.dedup();
    let user = users::set_roles(state.db.pool(), user_id, &roles).await?.ok_or(ApiError::NotFound("user"))?;
    state.api_keys.forget_user(user_id);
    Ok(axum::Json(user.into()))
}
