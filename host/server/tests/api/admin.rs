//! Admin routes: orgs, members, quotas, roles, and their authorisation.

use crate::helpers::{TestApp, spawn_app};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn only_admins_administer() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(app.post("/api/v1/orgs", Some(&user.token), json!({"name": "x"})).await.status(), 403);
    assert_eq!(
        app.put(
            "/api/v1/quotas",
            &user.token,
            json!({"ownerType": "user", "ownerId": user.id, "provider": "openai", "limit": 1, "period": "none"})
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        app.put(&format!("/api/v1/users/{}/roles", user.id), &user.token, json!({"roles": ["admin"]})).await.status(),
        403
    );
    assert_eq!(
        app.get(&format!("/api/v1/quotas?ownerType=user&ownerId={}", user.id), Some(&user.token)).await.status(),
        403
    );
    assert_eq!(app.post("/api/v1/orgs", None, json!({"name": "x"})).await.status(), 401);
}

#[tokio::test]
async fn orgs_members_quotas_and_roles() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.user().await;
    let created = app.post("/api/v1/orgs", Some(&admin.token), json!({"name": "acme"})).await;
    assert_eq!(created.status(), 201);
    let org: Value = created.json().await.unwrap();
    assert_eq!(org["name"], "acme");
    assert_eq!(app.post("/api/v1/orgs", Some(&admin.token), json!({"name": "acme"})).await.status(), 409);
    let org_id = org["orgId"].as_str().unwrap();
    assert_eq!(
        app.post(&format!("/api/v1/orgs/{org_id}/members"), Some(&admin.token), json!({"userId": user.id}))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.post(&format!("/api/v1/orgs/{}/members", Uuid::new_v4()), Some(&admin.token), json!({"userId": user.id}))
            .await
            .status(),
        404
    );
    let me: Value = app.get("/api/v1/auth/me", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(me["orgId"], org_id);

    assert_eq!(app.consume(&user, "openai", 30).await.status(), 200);
    let q = app
        .put(
            "/api/v1/quotas",
            &admin.token,
            json!({"ownerType": "user", "ownerId": user.id, "provider": "openai", "limit": 500, "period": "daily"}),
        )
        .await;
    assert_eq!(q.status(), 200);
    let q: Value = q.json().await.unwrap();
    assert_eq!(
        (q["limit"].as_i64(), q["used"].as_i64(), q["period"].as_str()),
        (Some(500), Some(30), Some("daily")),
        "used is kept"
    );
    assert!(q["resetAt"].as_str().unwrap().ends_with("T00:00:00Z"));
    // The new daily period starts now and counts what was used so far.
    let after: Value = app.consume(&user, "openai", 1).await.json().await.unwrap();
    assert_eq!(after["quota"]["used"], 31);
    let list: Value = app
        .get(&format!("/api/v1/quotas?ownerType=user&ownerId={}", user.id), Some(&admin.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let bad = app
        .put(
            "/api/v1/quotas",
            &admin.token,
            json!({"ownerType": "team", "ownerId": user.id, "provider": "openai", "limit": 5, "period": "none"}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let missing = app
        .put(
            "/api/v1/quotas",
            &admin.token,
            json!({"ownerType": "user", "ownerId": Uuid::new_v4(), "provider": "openai", "limit": 5, "period": "none"}),
        )
        .await;
    assert_eq!(missing.status(), 404);

    let roles =
        app.put(&format!("/api/v1/users/{}/roles", user.id), &admin.token, json!({"roles": ["user", "admin"]})).await;
    assert_eq!(roles.status(), 200);
    assert_eq!(roles.json::<Value>().await.unwrap()["roles"], json!(["admin", "user"]));
    let bad_role = app.put(&format!("/api/v1/users/{}/roles", user.id), &admin.token, json!({"roles": ["root"]})).await;
    assert_eq!(bad_role.status(), 400);
    assert_eq!(TestApp::error_code(bad_role).await, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_bootstrapping_one_admin_at_once_all_start() {
    let app = spawn_app().await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                leaky_server::bootstrap::create_admin(&pool, "bootstrap", "bootstrap password").await
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for attempt in attempts {
        ids.insert(attempt.await.unwrap().expect("every replica starts"));
    }
    assert_eq!(ids.len(), 1, "one admin");
}
