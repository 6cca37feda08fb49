//! `POST /api/v1/tokens/purchase` (idempotent) and `GET /api/v1/tokens/purchases/{id}`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::routes::validate;
use crate::state::AppState;
use leaky_store::purchases::{self, Claim};

/// `POST /tokens/purchase` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseBody {
    /// Who gets the tokens.
    pub user_id: Uuid,
    /// For which provider.
    pub provider: String,
    /// How many (1 to 10,000,000).
    pub tokens: u64,
}

/// Buy tokens. Needs `Idempotency-Key`: the same key and body replay the first answer (with
/// `Idempotent-Replayed: true`); the same key with another body is 422; a second request while
/// the first runs is 409. Keys are scoped to the caller.
#[utoipa::path(post, path = "/api/v1/tokens/purchase", tag = "tokens", request_body = PurchaseBody, security(("bearer" = []), ("apiKey" = [])),
    params(("Idempotency-Key" = String, Header, description = "1-255 characters, unique per purchase")),
    responses((status = 201, description = "the purchase, completed"), (status = 400, description = "no key, or invalid input"),
        (status = 403, description = "another user"), (status = 409, description = "the same key is still running"),
        (status = 422, description = "the key was used with another body")))]
pub async fn purchase(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<PurchaseBody>,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest("the Idempotency-Key header is required".into()))?
        .to_string();
    if key.len() > 255 {
        return Err(ApiError::InvalidRequest("Idempotency-Key is at most 255 characters".into()));
    }
    caller.may_act_for(body.user_id)?;
    validate::provider(&body.provider)?;
    validate::tokens(body.tokens)?;
    state.accounts.user(body.user_id).await?.ok_or(ApiError::NotFound("user"))?;

    let canonical = format!("{}|{}|{}", body.user_id, body.provider, body.tokens);
    let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    match purchases::claim(state.db.pool(), caller.user_id, &key, &hash).await? {
        Claim::New => {}
        Claim::Running => {
            return Err(ApiError::Conflict("a request with this Idempotency-Key is still running".into()));
        }
        Claim::Mismatch => {
            return Err(ApiError::Unprocessable("this Idempotency-Key was used with a different request body".into()));
        }
        Claim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            let mut response = (status, axum::Json(value)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }

    let tokens = i64::try_from(body.tokens).map_err(|_| ApiError::InvalidRequest("tokens is too large".into()))?;
    // If the saga fails midway the key stays claimed (409 to retries) and the purchase pending:
    // the next start resumes it and stores its answer under the key, so a retry never buys twice.
    let (status, answer) = state.sagas.purchase(caller.user_id, &key, body.user_id, &body.provider, tokens).await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    Ok((status, axum::Json(answer)).into_response())
}

/// A purchase with its saga steps (its owner, or an admin).
#[utoipa::path(get, path = "/api/v1/tokens/purchases/{id}", tag = "tokens", security(("bearer" = []), ("apiKey" = [])),
    params(("id" = Uuid, Path, description = "the purchase id")),
    responses((status = 200, description = "the purchase and its steps"), (status = 403, description = "not the owner"), (status = 404, description = "no such purchase")))]
pub async fn get_purchase(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let purchase = purchases::get(state.db.pool(), id).await?.ok_or(ApiError::NotFound("purchase"))?;
    caller.may_read(purchase.user_id)?;
    Ok(axum::Json(purchase).into_response())
}
