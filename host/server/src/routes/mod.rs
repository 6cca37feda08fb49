//! HTTP routes: one file per area. Handlers validate, authorise, call a service and shape the
//! answer; errors become responses in one place (`crate::error`).

pub mod admin;
pub mod analytics;
pub mod auth;
pub mod health;
pub mod openapi;
pub mod policies;
pub mod purchases;
pub mod tokens;
pub mod validate;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::swagger_ui))
        .route("/api/v1/auth/register", post(auth::register))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/me", get(auth::me))
        .route("/api/v1/auth/api-keys", post(auth::create_api_key).get(auth::list_api_keys))
        .route("/api/v1/auth/api-keys/{id}", delete(auth::revoke_api_key))
        .route("/api/v1/tokens/status", get(tokens::status))
        .route("/api/v1/tokens/quota", get(tokens::quota))
        .route("/api/v1/tokens/consume", post(tokens::consume))
        .route("/api/v1/tokens/purchase", post(purchases::purchase))
        .route("/api/v1/tokens/purchases/{id}", get(purchases::get_purchase))
        .route("/api/v1/orgs", post(admin::create_org))
        .route("/api/v1/orgs/{org_id}/members", post(admin::add_member))
        .route("/api/v1/quotas", put(admin::put_quota).get(admin::list_quotas))
        .route("/api/v1/users/{user_id}/roles", put(admin::set_roles))
        .route("/api/v1/analytics/report", get(analytics::report))
        .route("/api/v1/policies", get(policies::list))
        .route("/api/v1/policies/bindings", get(policies::bindings).put(policies::put_bindings))
        .route(
            "/api/v1/policies/{name}",
            post(policies::upload).layer(DefaultBodyLimit::max(crate::extract::MAX_COMPONENT_BYTES)),
        )
        .route("/api/v1/policies/{name}/activate", post(policies::activate))
        .route("/api/v1/policies/{name}/rollback", post(policies::rollback))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}
