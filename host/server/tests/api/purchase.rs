//! Purchases: the saga and Idempotency-Key, exactly as API.md says.

use crate::helpers::{TestApp, User, spawn_app};
use reqwest::Response;
use serde_json::{Value, json};

async fn buy(app: &TestApp, user: &User, key: Option<&str>, tokens: u64) -> Response {
    let mut req = app
        .client
        .post(app.url("/api/v1/tokens/purchase"))
        .bearer_auth(&user.token)
        .json(&json!({"userId": user.id, "provider": "openai", "tokens": tokens}));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_purchase_credits_once_and_replays() {
    let app = spawn_app().await;
    let user = app.user().await;
    let first = buy(&app, &user, Some("k1"), 500).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "COMPLETED");
    assert_eq!(first["quota"]["limit"], 100_500);
    let replay = buy(&app, &user, Some("k1"), 500).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["limit"], 100_500, "credited once");

    let detail: Value = app
        .get(&format!("/api/v1/tokens/purchases/{}", first["purchaseId"].as_str().unwrap()), Some(&user.token))
        .await
        .json()
        .await
        .unwrap();
    let steps: Vec<&str> = detail["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["capture_payment", "credit_quota", "complete"]);
    let other = app.user().await;
    assert_eq!(
        app.get(&format!("/api/v1/tokens/purchases/{}", first["purchaseId"].as_str().unwrap()), Some(&other.token))
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn no_key_is_400_and_another_body_is_422_and_keys_are_per_caller() {
    let app = spawn_app().await;
    let user = app.user().await;
    let r = buy(&app, &user, None, 5).await;
    assert_eq!(r.status(), 400);
    assert_eq!(buy(&app, &user, Some("k"), 5).await.status(), 201);
    let r = buy(&app, &user, Some("k"), 6).await;
    assert_eq!(r.status(), 422);
    // Another caller's same key is another key.
    let other = app.user().await;
    assert_eq!(buy(&app, &other, Some("k"), 6).await.status(), 201);
}

#[tokio::test]
async fn fifty_parallel_purchases_with_one_key_credit_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, url, user) = (app.client.clone(), app.url("/api/v1/tokens/purchase"), user.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(&user.token)
                    .header("idempotency-key", "same")
                    .json(&json!({"userId": user.id, "provider": "openai", "tokens": 1000}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.headers().get("idempotent-replayed").is_some())
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            (201, false) => fresh += 1,
            (201, true) | (409, _) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one request did the purchase");
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["limit"], 101_000, "one credit");
    let credits: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'purchase'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(credits, 1);
}

#[tokio::test]
async fn a_second_request_while_the_first_runs_is_409_and_unknown_purchases_are_404() {
    let app = spawn_app().await;
    let user = app.user().await;
    // The first request holds the key (claimed, still running).
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(format!("{}|openai|5", user.id).as_bytes()))
    };
    let claim = leaky_store::purchases::claim(&app.pool, user.id, "busy", &hash).await.unwrap();
    assert_eq!(claim, leaky_store::purchases::Claim::New);
    let r = buy(&app, &user, Some("busy"), 5).await;
    assert_eq!(r.status(), 409);
    assert_eq!(TestApp::error_code(r).await, "conflict");
    let r = app.get(&format!("/api/v1/tokens/purchases/{}", uuid::Uuid::new_v4()), Some(&user.token)).await;
    assert_eq!(r.status(), 404);
}
