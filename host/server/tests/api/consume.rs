//! Consume: all-or-nothing across rate limit, user quota and org quota; concurrency; analytics.

use std::time::Duration;

use crate::helpers::{TestApp, User, no_rate_limit, spawn_app, spawn_app_with};
use serde_json::{Value, json};

#[tokio::test]
async fn an_admitted_consume_reports_quota_and_rate_limit_with_ietf_fields() {
    let app = spawn_app().await;
    let user = app.user().await;
    let r = app.consume(&user, "openai", 50).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["ratelimit-policy"].to_str().unwrap().contains("q=1000"));
    assert!(r.headers()["ratelimit"].to_str().unwrap().contains("r=950"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["tokens"], 50);
    assert_eq!(body["quota"]["remaining"], 100_000 - 50);
    assert_eq!(body["rateLimit"]["remaining"], 950);
    let quota: Value = app
        .get(&format!("/api/v1/tokens/quota?userId={}&provider=openai", user.id), Some(&user.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(quota["used"], 50);
    assert_eq!(quota["limit"], 100_000);
    assert_eq!(quota["rateLimit"]["strategy"], "leaky-bucket");
    assert_eq!(quota["rateLimit"]["capacity"], 1000);
}

#[tokio::test]
async fn invalid_consumes_are_400_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    for (provider, tokens) in [("OpenAI", 1), ("", 1), ("openai", 0), ("openai", 10_000_001)] {
        let r = app
            .post(
                "/api/v1/tokens/consume",
                Some(&user.token),
                json!({"userId": user.id, "provider": provider, "tokens": tokens}),
            )
            .await;
        assert_eq!(r.status(), 400, "{provider} {tokens}");
    }
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 0);
}

#[tokio::test]
async fn a_rate_refusal_is_429_with_retry_after_and_spends_no_quota() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(app.consume(&user, "openai", 1000).await.status(), 200);
    let r = app.consume(&user, "openai", 10).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // About a second (10 tokens at 10/s), less whatever leaked since the first request.
    let wait = body["error"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1000).contains(&wait), "{wait}");
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 1000, "the refused 10 tokens were not charged");
    let too_big = app.consume(&user, "openai", 5000).await;
    assert_eq!(too_big.status(), 429);
    let body: Value = too_big.json().await.unwrap();
    assert!(body["error"]["reason"].as_str().unwrap().contains("never"));
}

#[tokio::test]
async fn a_quota_refusal_names_the_scope_and_spends_no_rate_capacity() {
    let app = spawn_app_with(|s| {
        s.token.bucket.capacity = 10;
        s.token.bucket.leak_rate_per_second = 0.001;
    })
    .await;
    let admin = app.admin().await;
    let user = app.user().await;
    app.set_quota(&admin, "user", user.id, "openai", 5).await;
    assert_eq!(app.consume(&user, "openai", 5).await.status(), 200);
    let refused = app.consume(&user, "openai", 5).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["scope"], "user");
    // The bucket (10, barely draining) still has the 5 the refused request did not take.
    app.set_quota(&admin, "user", user.id, "openai", 100).await;
    assert_eq!(app.consume(&user, "openai", 5).await.status(), 200);
    assert_eq!(app.consume(&user, "openai", 1).await.status(), 429, "and now the bucket is full");
}

/// Polls the user's report until `done` holds: events reach analytics through the outbox.
async fn wait_for_report(app: &TestApp, user: &User, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let report: Value = app
            .get(&format!("/api/v1/analytics/report?userId={}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=day", user.id), Some(&user.token))
            .await
            .json()
            .await
            .unwrap();
        if done(&report["totals"]) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("analytics never reached the expected totals");
}

#[tokio::test]
async fn two_thousand_concurrent_consumes_against_a_thousand_token_quota() {
    let app = spawn_app_with(no_rate_limit).await;
    let admin = app.admin().await;
    let user = app.user().await;
    app.set_quota(&admin, "user", user.id, "openai", 1000).await;
    let tasks: Vec<_> = (0..2000)
        .map(|_| {
            let (client, url, user) = (app.client.clone(), app.url("/api/v1/tokens/consume"), user.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(&user.token)
                    .json(&json!({"userId": user.id, "provider": "openai", "tokens": 1}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (1000, 1000));
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 1000);
    assert_eq!(leaky_store::ledger::consumed(&app.pool, user.id, "openai").await.unwrap(), 1000);
    // The counter as the database has it (the row, with the spend pending write-back) agrees
    // with the book and the ledger; within a write-back interval the row alone does too.
    let stored = leaky_store::quotas::get(&app.db, leaky_store::quotas::OwnerType::User, user.id, "openai")
        .await
        .unwrap()
        .expect("the quota row");
    assert_eq!((stored.limit, stored.used), (1000, 1000));
    let row_used = || async {
        sqlx::query_scalar::<_, i64>("SELECT used FROM quotas WHERE owner_type = 'user' AND owner_id = $1")
            .bind(user.id.to_string())
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while row_used().await != Some(1000) {
        assert!(std::time::Instant::now() < deadline, "the counter was not written back: {:?}", row_used().await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = wait_for_report(&app, &user, |t| t["requests"] == 1000 && t["quotaRejected"] == 1000).await;
    assert_eq!(report["totals"]["tokens"], 1000);
    assert_eq!(report["totals"]["quotaRejected"], 1000);
    assert_eq!(report["byProvider"][0]["provider"], "openai");
    assert_eq!(report["series"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_org_quota_shared_by_five_users_is_never_exceeded() {
    let app = spawn_app_with(no_rate_limit).await;
    let admin = app.admin().await;
    let org: Value = app.post("/api/v1/orgs", Some(&admin.token), json!({"name": "acme"})).await.json().await.unwrap();
    let org_id = org["orgId"].as_str().unwrap().to_string();
    let mut users = Vec::new();
    for _ in 0..5 {
        let user = app.user().await;
        let r =
            app.post(&format!("/api/v1/orgs/{org_id}/members"), Some(&admin.token), json!({"userId": user.id})).await;
        assert_eq!(r.status(), 204);
        users.push(user);
    }
    app.set_quota(&admin, "org", org_id.parse().unwrap(), "openai", 300).await;
    let tasks: Vec<_> = users
        .iter()
        .flat_map(|u| std::iter::repeat_n(u.clone(), 100))
        .map(|user| {
            let (client, url) = (app.client.clone(), app.url("/api/v1/tokens/consume"));
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(&user.token)
                    .json(&json!({"userId": user.id, "provider": "openai", "tokens": 1}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                (status, body["error"]["scope"].as_str().map(String::from))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, Some(scope)) => assert_eq!(scope, "org"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 300);
    let quotas: Value = app
        .get(&format!("/api/v1/quotas?ownerType=org&ownerId={org_id}"), Some(&admin.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(quotas[0]["limit"], 300);
    let org_uuid = org_id.parse().unwrap();
    let stored = leaky_store::quotas::get(&app.db, leaky_store::quotas::OwnerType::Org, org_uuid, "openai")
        .await
        .unwrap()
        .expect("the org quota row");
    assert_eq!(stored.used, 300, "the stored org counter adds up to what was granted");
    let org_report: Value = app
        .get(
            &format!("/api/v1/analytics/report?orgId={org_id}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
            Some(&admin.token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(org_report["totals"]["requests"].as_i64().unwrap() <= 300);
}

#[tokio::test]
async fn users_see_only_their_own_analytics() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user().await, app.user().await);
    assert_eq!(app.consume(&alice, "openai", 7).await.status(), 200);
    let report = wait_for_report(&app, &alice, |t| t["requests"] == 1).await;
    assert_eq!(report["totals"]["tokens"], 7);
    let r = app
        .get(
            &format!("/api/v1/analytics/report?userId={}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z", alice.id),
            Some(&bob.token),
        )
        .await;
    assert_eq!(r.status(), 403);
    let r =
        app.get("/api/v1/analytics/report?from=2100-01-01T00:00:00Z&to=2000-01-01T00:00:00Z", Some(&bob.token)).await;
    assert_eq!(r.status(), 400);
    let admin = app.admin().await;
    let r = app
        .get(
            &format!("/api/v1/analytics/report?userId={}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z", alice.id),
            Some(&admin.token),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn new_users_get_the_default_quota_with_per_provider_overrides() {
    let app = spawn_app_with(|s| {
        s.quota.default_limit = 300;
        s.quota.providers.insert("mistral".into(), 40);
    })
    .await;
    let user = app.user().await;
    let openai: Value = app.consume(&user, "openai", 1).await.json().await.unwrap();
    assert_eq!(openai["quota"]["limit"], 300);
    let mistral: Value = app.consume(&user, "mistral", 1).await.json().await.unwrap();
    assert_eq!(mistral["quota"]["limit"], 40);
}

#[tokio::test]
async fn a_failed_commit_is_503_and_spends_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_eq!(app.consume(&user, "openai", 5).await.status(), 200);
    // Break the ledger's transaction: the outbox insert now fails, so the whole batch does.
    sqlx::query("ALTER TABLE outbox RENAME TO outbox_gone").execute(&app.pool).await.unwrap();
    let r = app.consume(&user, "openai", 7).await;
    assert_eq!(r.status(), 503);
    assert_eq!(TestApp::error_code(r).await, "unavailable");
    let quota: Value = app.get("/api/v1/tokens/quota?provider=openai", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(quota["used"], 5, "the failed debit's reservation was undone");
    assert!(quota["rateLimit"]["remaining"].as_u64().unwrap() >= 995, "and its rate capacity: {quota}");
    assert_eq!(leaky_store::ledger::consumed(&app.pool, user.id, "openai").await.unwrap(), 5);
}

#[tokio::test]
async fn accounts_dropped_from_the_book_under_load_never_let_a_quota_be_overspent() {
    // 100 accounts (10 users, 10 providers) with 10 tokens each, and 2,000 one-token requests in
    // 20 waves of 100 at once, each wave on one provider, every provider twice. A sweep is due
    // whenever the book holds twice what the last sweep kept (at least two), and an account is
    // idle as soon as no request holds it: so each wave's loads sweep the book while that
    // wave's own accounts have debits in flight, and drop the accounts of the waves before
    // (whose requests have all ended; the book never held more than twice a wave's accounts
    // since). The second wave of a provider loads its accounts again, spent to the limit.
    let app = spawn_app_with(|s| {
        no_rate_limit(s);
        s.quota.default_limit = 10;
        s.quota.book_sweep_at = 2;
        s.quota.book_idle_seconds = 0;
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(app.user().await);
    }
    let providers: Vec<String> = (0..10).map(|p| format!("provider-{p}")).collect();
    let mut statuses = std::collections::BTreeMap::new();
    for wave in 0..20 {
        let provider = &providers[wave % 10];
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let (client, url) = (app.client.clone(), app.url("/api/v1/tokens/consume"));
                let (user, provider) = (users[i % 10].clone(), provider.clone());
                tokio::spawn(async move {
                    client
                        .post(url)
                        .bearer_auth(&user.token)
                        .json(&json!({"userId": user.id, "provider": provider, "tokens": 1}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for t in tasks {
            *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(statuses, [(200, 1000), (429, 1000)].into(), "10 tokens granted per account, no more");
    for user in &users {
        for provider in &providers {
            assert_eq!(leaky_store::ledger::consumed(&app.pool, user.id, provider).await.unwrap(), 10);
            let stored = leaky_store::quotas::get(&app.db, leaky_store::quotas::OwnerType::User, user.id, provider)
                .await
                .unwrap()
                .expect("the quota row");
            assert_eq!((stored.limit, stored.used), (10, 10));
            let quota: Value = app
                .get(&format!("/api/v1/tokens/quota?provider={provider}"), Some(&user.token))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(quota["used"], 10, "the book, reloaded or not, agrees");
        }
    }
    assert!(app.metric("leaky_accounts_evicted_total", &[]).await > 0.0, "the sweeps dropped accounts");
}

#[tokio::test]
async fn a_sweep_of_the_book_keeps_an_account_whose_rate_limit_is_still_refilling() {
    let app = spawn_app_with(|s| {
        s.quota.book_sweep_at = 1;
        s.quota.book_idle_seconds = 0;
    })
    .await;
    let (alice, bob) = (app.user().await, app.user().await);
    assert_eq!(app.consume(&alice, "openai", 1000).await.status(), 200, "alice empties her bucket");
    for p in 1..=3 {
        assert_eq!(app.consume(&bob, &format!("provider-{p}"), 1).await.status(), 200);
    }
    // Bob's one token leaks out in 100 ms; then his next requests make the book sweep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in 4..=7 {
        assert_eq!(app.consume(&bob, &format!("provider-{p}"), 1).await.status(), 200);
    }
    assert!(app.metric("leaky_accounts_evicted_total", &[]).await >= 3.0, "bob's settled accounts were dropped");
    let r = app.consume(&alice, "openai", 10).await;
    assert_eq!(r.status(), 429, "alice's account, still refilling, was kept");
    assert_eq!(TestApp::error_code(r).await, "rate_limit_exceeded");
}
