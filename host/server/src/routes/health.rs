//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::state::AppState;

/// Alive: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "UP" }))
}

/// Ready: every backend answers.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "a backend is down")))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.db.ping().await;
    let mut checks = json!({ "database": database });
    let redis = state.consume.shared_state_answers().await;
    if let Some(redis) = redis {
        checks["redis"] = json!(redis);
    }
    let up = database && redis.unwrap_or(true);
    let status = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "status": if up { "UP" } else { "DOWN" }, "checks": checks })))
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
