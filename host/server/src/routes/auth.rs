//! `/api/v1/auth/*`: register, login, me, API keys.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ApiKeySecret, Caller, hash_password, verify_password};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::routes::validate;
use crate::state::AppState;
use leaky_store::{api_keys, users};

/// `POST /auth/register` body.
#[derive(Deserialize, ToSchema)]
pub struct RegisterBody {
    /// 3-64 of `[A-Za-z0-9_.-]`.
    pub username: String,
    /// A valid email.
    pub email: String,
    /// At least 8 characters.
    pub password: String,
}

/// A user as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// The user's id.
    pub user_id: Uuid,
    /// Login name.
    pub username: String,
    /// Email.
    pub email: String,
    /// The user's org, if an admin put the user in one.
    pub org_id: Option<Uuid>,
    /// Roles.
    pub roles: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl From<users::User> for UserView {
    fn from(u: users::User) -> Self {
        Self {
            user_id: u.id,
            username: u.username,
            email: u.email,
            org_id: u.org_id,
            roles: u.roles,
            created_at: validate::rfc3339(u.created_at),
        }
    }
}

/// Register a user (role `user`, no org).
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterBody,
    responses((status = 201, body = UserView), (status = 400, description = "invalid input"), (status = 409, description = "username or email taken")))]
pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterBody>,
) -> Result<(StatusCode, axum::Json<UserView>), ApiError> {
    validate::username(&body.username)?;
    validate::email(&body.email)?;
    validate::password(&body.password)?;
    let hash = hash_password(body.password).await?;
    let user =
        users::create(state.db.pool(), &body.username, &body.email.to_ascii_lowercase(), &hash, &["user"]).await?;
    Ok((StatusCode::CREATED, axum::Json(user.into())))
}

/// `POST /auth/login` body.
#[derive(Deserialize, ToSchema)]
pub struct LoginBody {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A login's answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The user's id.
    pub user_id: Uuid,
    /// The user's roles.
    pub roles: Vec<String>,
}

/// Log in: a JWT for the user. Attempts per username are rate-limited.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginBody,
    responses((status = 200, body = TokenView), (status = 401, description = "invalid credentials"), (status = 429, description = "too many attempts")))]
pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<LoginBody>,
) -> Result<axum::Json<TokenView>, ApiError> {
    // No user has a name that breaks the rules (every way of creating one checks them), so such
    // a name is answered at once: it gets no attempt bucket and costs no password hash.
    if validate::username(&body.username).is_err() {
        return Err(ApiError::InvalidCredentials);
    }
    state.logins.attempt(&body.username)?;
    let user = users::by_username(state.db.pool(), &body.username).await?;
    let hash = user.as_ref().map_or_else(|| state.dummy_hash.as_str().to_string(), |u| u.password_hash.clone());
    let valid = verify_password(body.password, hash).await;
    let user = match user {
        Some(user) if valid => user,
        _ => return Err(ApiError::InvalidCredentials),
    };
    let access_token = state.jwt.issue(user.id, &user.roles)?;
    Ok(axum::Json(TokenView {
        access_token,
        token_type: "Bearer",
        expires_in: state.jwt.ttl_seconds(),
        user_id: user.id,
        roles: user.roles,
    }))
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = UserView), (status = 401, description = "unauthenticated")))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<axum::Json<UserView>, ApiError> {
    let user = users::by_id(state.db.pool(), caller.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated("the user no longer exists"))?;
    Ok(axum::Json(user.into()))
}

/// `POST /auth/api-keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyBody {
    /// A label, 1-100 characters.
    pub name: String,
    /// Optional expiry, RFC 3339, in the future.
    pub expires_at: Option<String>,
}

/// An API key (the secret only in the creation answer).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// The key's id.
    pub id: Uuid,
    /// Its label.
    pub name: String,
    /// The whole key: shown only when created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The first characters of the key.
    pub prefix: String,
    /// Creation time.
    pub created_at: String,
    /// Expiry, if any.
    pub expires_at: Option<String>,
    /// Revocation time, if revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

fn key_view(k: api_keys::ApiKey, key: Option<String>) -> KeyView {
    KeyView {
        id: k.id,
        name: k.name,
        key,
        prefix: k.prefix,
        created_at: validate::rfc3339(k.created_at),
        expires_at: k.expires_at.map(validate::rfc3339),
        revoked_at: k.revoked_at.map(validate::rfc3339),
    }
}

/// Create an API key for the caller. The key is in this answer and never again.
#[utoipa::path(post, path = "/api/v1/auth/api-keys", tag = "auth", request_body = NewKeyBody, security(("bearer" = []), ("apiKey" = [])),
    responses((status = 201, body = KeyView), (status = 400, description = "invalid input"), (status = 401, description = "unauthenticated")))]
pub async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewKeyBody>,
) -> Result<(StatusCode, axum::Json<KeyView>), ApiError> {
    let name = validate::label(&body.name)?;
    let expires_at = body.expires_at.as_deref().map(|t| validate::parse_rfc3339("expiresAt", t)).transpose()?;
    if expires_at.is_some_and(|at| at <= leaky_store::now_ms()) {
        return Err(ApiError::InvalidRequest("expiresAt must be in the future".into()));
    }
    let secret = ApiKeySecret::generate(caller.user_id);
    let stored =
        api_keys::create(state.db.pool(), caller.user_id, name, &secret.prefix, &secret.hash, expires_at).await?;
    Ok((StatusCode::CREATED, axum::Json(key_view(stored, Some(secret.key)))))
}

/// The caller's API keys, without secrets.
#[utoipa::path(get, path = "/api/v1/auth/api-keys", tag = "auth", security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = [KeyView]), (status = 401, description = "unauthenticated")))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Vec<KeyView>>, ApiError> {
    let keys = api_keys::list(state.db.pool(), caller.user_id).await?;
    Ok(axum::Json(keys.into_iter().map(|k| key_view(k, None)).collect()))
}

/// Revoke one of the caller's keys; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/auth/api-keys/{id}", tag = "auth", security(("bearer" = []), ("apiKey" = [])),
    params(("id" = Uuid, Path, description = "the key's id")),
    responses((status = 204), (status = 401, description = "unauthenticated"), (status = 404, description = "no such key of the caller")))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if state.api_keys.revoke(caller.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("api key"))
    }
}
