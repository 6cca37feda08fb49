//! Health, readiness, metrics, status, OpenAPI, request ids, error format.

use crate::helpers::spawn_app;
use serde_json::Value;

#[tokio::test]
async fn health_ready_and_status_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live", None).await.status(), 200);
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status(), 200);
    let status: Value = app.get("/api/v1/tokens/status", None).await.json().await.unwrap();
    assert_eq!(status["status"], "UP");
    let policies = status["policies"].as_array().unwrap();
    assert!(policies.iter().any(|p| p["provider"] == "*" && p["module"] == "leaky-bucket"), "{status}");
    assert!(policies.iter().all(|p| p["version"].as_i64().unwrap() >= 1), "versions count from 1: {status}");
    assert_eq!(policies[0]["sha256"].as_str().unwrap().len(), 64, "each names its component's sha256");
    // policies/bindings.toml binds anthropic to the sliding window.
    assert!(policies.iter().any(|p| p["provider"] == "anthropic" && p["module"] == "sliding-window"), "{status}");
    let user = app.user().await;
    let r: Value = app.consume(&user, "anthropic", 10).await.json().await.unwrap();
    assert_eq!(r["rateLimit"]["strategy"], "sliding-window");
    assert_eq!(r["rateLimit"]["capacity"], 20000);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_http_and_consume_series() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(app.consume(&user, "openai", 5).await.status(), 200);
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains("http_server_request_duration_seconds"), "{text}");
    assert!(text.contains("leaky_consume_total{outcome=\"allowed\"}"), "{text}");
    // The group commit's size is counted in writes, not in seconds like the durations.
    assert!(text.contains("leaky_ledger_batch_size_bucket{le=\"2048\"}"), "{text}");
    assert!(!text.contains("leaky_ledger_batch_size_bucket{le=\"0.0005\"}"), "{text}");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json", None).await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/me",
        "/api/v1/auth/api-keys",
        "/api/v1/auth/api-keys/{id}",
        "/api/v1/tokens/status",
        "/api/v1/tokens/quota",
        "/api/v1/tokens/consume",
        "/api/v1/tokens/purchase",
        "/api/v1/tokens/purchases/{id}",
        "/api/v1/orgs",
        "/api/v1/orgs/{org_id}/members",
        "/api/v1/quotas",
        "/api/v1/users/{user_id}/roles",
        "/api/v1/analytics/report",
        "/api/v1/policies",
        "/api/v1/policies/{name}",
        "/api/v1/policies/{name}/activate",
        "/api/v1/policies/{name}/rollback",
        "/api/v1/policies/bindings",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the document");
    }
    let ui = app.get("/docs", None).await.text().await.unwrap();
    assert!(ui.contains("/api/v1/openapi.json"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/health/live")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.get("/health/live", None).await;
    assert!(!r.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_400_and_413_in_the_error_format() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    app.assert_oversized_body_refused(&app.client).await;
    let user = app.user().await;
    let r = app.get("/api/v1/tokens/purchases/not-a-uuid", Some(&user.token)).await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/v1/tokens/consume"))
        .bearer_auth(&user.token)
        .json(&serde_json::json!({"userId": user.id, "provider": "openai", "tokens": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format() {
    let app = spawn_app().await;
    let r = app.get("/api/v1/nothing-here", None).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let r = app.client.delete(app.url("/api/v1/tokens/status")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_request_past_the_timeout_is_503_in_the_error_format() {
    let app = crate::helpers::spawn_app_with(|s| s.server.request_timeout_ms = 1).await;
    // Registering hashes a password with argon2id: far longer than a millisecond.
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            serde_json::json!({"username": "slowpoke", "email": "s@example.com", "password": "password"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
}
