//! Registration, login, tokens, API keys, roles: 401 versus 403.

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};

#[tokio::test]
async fn register_validates_and_refuses_duplicates() {
    let app = spawn_app().await;
    let ok = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "demo", "email": "demo@example.com", "password": "password"}),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["username"], "demo");
    assert_eq!(body["orgId"], Value::Null);
    assert_eq!(body["roles"], json!(["user"]));
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
    let dup = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "demo", "email": "other@example.com", "password": "password"}),
        )
        .await;
    assert_eq!(dup.status(), 409);
    assert_eq!(TestApp::error_code(dup).await, "conflict");
    let dup_email = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "demo2", "email": "demo@example.com", "password": "password"}),
        )
        .await;
    assert_eq!(dup_email.status(), 409);
    for bad in [
        json!({"username": "ab", "email": "a@b.co", "password": "password"}),
        json!({"username": "abc", "email": "not-an-email", "password": "password"}),
        json!({"username": "abc", "email": "a@b.co", "password": "short"}),
        json!({"username": "abc", "email": "a@b.co"}),
    ] {
        let r = app.post("/api/v1/auth/register", None, bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(TestApp::error_code(r).await, "invalid_request");
    }
}

#[tokio::test]
async fn login_gives_a_jwt_and_the_same_401_for_unknown_users_and_wrong_passwords() {
    let app = spawn_app().await;
    let user = app.user().await;
    let me: Value = app.get("/api/v1/auth/me", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(me["userId"], user.id.to_string());
    let wrong =
        app.post("/api/v1/auth/login", None, json!({"username": me["username"], "password": "wrong password"})).await;
    let unknown =
        app.post("/api/v1/auth/login", None, json!({"username": "nobody-here", "password": "wrong password"})).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert!(wrong.headers().contains_key("www-authenticate"));
    let (a, b): (Value, Value) = (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(a, b, "no difference between an unknown user and a wrong password");
    assert_eq!(a["error"]["code"], "invalid_credentials");
}

#[tokio::test]
async fn missing_or_bad_credentials_are_401_with_www_authenticate() {
    let app = spawn_app().await;
    for token in [None, Some("garbage"), Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")] {
        let r = app.get("/api/v1/auth/me", token).await;
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let r = app.client.get(app.url("/api/v1/auth/me")).header("x-api-key", "leaky_nope").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_token_from_another_issuer_secret_is_refused() {
    let app = spawn_app().await;
    let other = spawn_app_with(|s| {
        s.auth.jwt_secret = Some(leaky_server::settings::Secret::new("another secret, also at least 32 chars long"))
    })
    .await;
    let foreign = other.user().await;
    assert_eq!(app.get("/api/v1/auth/me", Some(&foreign.token)).await.status(), 401);
}

#[tokio::test]
async fn api_keys_work_are_listed_without_secrets_and_stop_at_once_when_revoked() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.post("/api/v1/auth/api-keys", Some(&user.token), json!({"name": "gateway"})).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("leaky_{}_", user.id.simple())));
    let with_key = |path: &str| app.client.get(app.url(path)).header("x-api-key", key.clone()).send();
    assert_eq!(with_key("/api/v1/auth/me").await.unwrap().status(), 200);
    let listed: Value = app.get("/api/v1/auth/api-keys", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("key").is_none(), "secrets are never listed");
    let revoked = app
        .client
        .delete(app.url(&format!("/api/v1/auth/api-keys/{}", created["id"].as_str().unwrap())))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(with_key("/api/v1/auth/me").await.unwrap().status(), 401, "a revoked key is refused at once");
    let other = app.user().await;
    let not_theirs = app
        .client
        .delete(app.url(&format!("/api/v1/auth/api-keys/{}", created["id"].as_str().unwrap())))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(not_theirs.status(), 404);
}

#[tokio::test]
async fn a_user_cannot_read_or_spend_another_users_quota() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user().await, app.user().await);
    let spend = app
        .post(
            "/api/v1/tokens/consume",
            Some(&alice.token),
            json!({"userId": bob.id, "provider": "openai", "tokens": 1}),
        )
        .await;
    assert_eq!(spend.status(), 403);
    assert_eq!(TestApp::error_code(spend).await, "forbidden");
    let read = app.get(&format!("/api/v1/tokens/quota?userId={}&provider=openai", bob.id), Some(&alice.token)).await;
    assert_eq!(read.status(), 403);
    // A service account may act for anyone.
    let admin = app.admin().await;
    let svc = app.user().await;
    let r = app.put(&format!("/api/v1/users/{}/roles", svc.id), &admin.token, json!({"roles": ["service"]})).await;
    assert_eq!(r.status(), 200);
    let me: Value = app.get("/api/v1/auth/me", Some(&svc.token)).await.json().await.unwrap();
    let svc = app.login(me["username"].as_str().unwrap(), "correct horse").await;
    let r = app
        .post("/api/v1/tokens/consume", Some(&svc.token), json!({"userId": bob.id, "provider": "openai", "tokens": 1}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_username() {
    let app = spawn_app_with(|s| {
        s.auth.login_burst = 3;
        s.auth.login_refill_seconds = 600;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.post("/api/v1/auth/login", None, json!({"username": "victim", "password": "guess guess"}))
                .await
                .status(),
            401
        );
    }
    let limited = app.post("/api/v1/auth/login", None, json!({"username": "victim", "password": "guess guess"})).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        app.post("/api/v1/auth/login", None, json!({"username": "someone-else", "password": "guess guess"}))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn a_username_no_user_can_have_is_refused_like_an_unknown_one_without_spending_attempts() {
    let app = spawn_app_with(|s| {
        s.auth.login_burst = 1;
        s.auth.login_refill_seconds = 600;
    })
    .await;
    let impossible = ["x".repeat(10_000), "two words".to_string(), "ab".to_string()];
    for name in &impossible {
        for _ in 0..3 {
            let r = app.post("/api/v1/auth/login", None, json!({"username": name, "password": "guess guess"})).await;
            assert_eq!(r.status(), 401, "{} characters", name.len());
            assert!(r.headers().contains_key("www-authenticate"));
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_credentials");
        }
    }
    let unknown = app.post("/api/v1/auth/login", None, json!({"username": "nobody-here", "password": "guess"})).await;
    assert_eq!(unknown.status(), 401, "a name that could exist has its attempt");
    let again = app.post("/api/v1/auth/login", None, json!({"username": "nobody-here", "password": "guess"})).await;
    assert_eq!(again.status(), 429, "and only its one");
}
