//! Cleartext HTTP/2 with prior knowledge, as a gateway multiplexing its calls over one
//! connection speaks it: the same answers, limits and authorization as over HTTP/1.1.

use reqwest::{Client, Version};
use serde_json::{Value, json};

use crate::helpers::{no_rate_limit, spawn_app_with};

fn http2_client() -> Client {
    Client::builder().http2_prior_knowledge().build().unwrap()
}

#[tokio::test]
async fn concurrent_consumes_on_one_http2_connection_are_each_answered_and_counted() {
    let app = spawn_app_with(no_rate_limit).await;
    let user = app.user().await;
    let client = http2_client();
    let mut consumes = tokio::task::JoinSet::new();
    for _ in 0..300 {
        // Clones share the client's one connection to the app.
        let consume = client
            .post(app.url("/api/v1/tokens/consume"))
            .bearer_auth(&user.token)
            .json(&json!({"userId": user.id, "provider": "openai", "tokens": 1}));
        consumes.spawn(consume.send());
    }
    // Each answer's request id is its own: sent unindexed, none is mistaken for another's.
    let mut ids = std::collections::HashSet::new();
    while let Some(answer) = consumes.join_next().await {
        let answer = answer.unwrap().unwrap();
        assert_eq!(answer.version(), Version::HTTP_2);
        assert_eq!(answer.status(), 200);
        assert!(answer.headers()["ratelimit"].to_str().unwrap().contains(";r="));
        assert!(ids.insert(answer.headers()["x-request-id"].to_str().unwrap().to_owned()));
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["allowed"], true);
    }
    assert_eq!(ids.len(), 300);
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 300);
    // The request metrics tell HTTP/2 from HTTP/1.1.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let over = |version: &str| {
        metrics.lines().any(|line| {
            line.starts_with("http_server_request_duration_seconds_count")
                && line.contains(r#"http_route="/api/v1/tokens/consume""#)
                && line.contains(&format!(r#"network_protocol_version="{version}""#))
        })
    };
    assert!(over("2"), "{metrics}");
}

#[tokio::test]
async fn http2_requests_meet_the_same_authorization_and_body_limit() {
    let app = spawn_app_with(|_| {}).await;
    let user = app.user().await;
    let client = http2_client();
    let unauthenticated = client
        .post(app.url("/api/v1/tokens/consume"))
        .json(&json!({"userId": user.id, "provider": "openai", "tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.version(), Version::HTTP_2);
    assert_eq!(unauthenticated.status(), 401);
    app.assert_oversized_body_refused(&client).await;
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 0);
}

#[tokio::test]
async fn the_request_ids_a_gateway_sends_come_back_over_http2() {
    let app = spawn_app_with(no_rate_limit).await;
    let client = http2_client();
    for id in ["gateway-1", "gateway-2", "gateway-1"] {
        let answer = client.get(app.url("/health/live")).header("x-request-id", id).send().await.unwrap();
        assert_eq!(answer.version(), Version::HTTP_2);
        assert_eq!(answer.headers()["x-request-id"], id);
    }
}
