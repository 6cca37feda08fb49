//! The policy lifecycle over REST: upload (validated), versions, activate, rollback, bindings,
//! shadow mode, quota rules, and swaps under load.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::helpers::{TestApp, User, no_rate_limit, policies_dir, spawn_app, spawn_app_with};

/// A built component of the policy directory.
pub fn component(name: &str) -> Vec<u8> {
    std::fs::read(policies_dir().join(format!("{name}.wasm"))).expect("built component")
}

/// A hostile fixture.
fn fixture(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join(format!("../../guests/fixtures/wasm/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build with `cargo xtask guests`)", path.display()))
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The same component with a custom section appended: identical behaviour, other bytes (so
/// another version of the same strategy).
pub fn with_custom_section(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = b"leaky-test";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    leb128(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

async fn bind(app: &TestApp, admin: &User, bindings: Value) {
    let r = app.put("/api/v1/policies/bindings", &admin.token, bindings).await;
    assert_eq!(r.status(), 200, "bindings: {:?}", r.text().await);
}

async fn activate(app: &TestApp, admin: &User, name: &str, version: i64) -> reqwest::Response {
    app.post(&format!("/api/v1/policies/{name}/activate"), Some(&admin.token), json!({ "version": version })).await
}

async fn rollback(app: &TestApp, admin: &User, name: &str) -> reqwest::Response {
    app.post(&format!("/api/v1/policies/{name}/rollback"), Some(&admin.token), json!({})).await
}

/// The `module` (`name@version`) that decided a consume, or the error code.
async fn decided_by(app: &TestApp, user: &User, provider: &str) -> String {
    let r = app.consume(user, provider, 1).await;
    let status = r.status();
    let body = json_of(r).await;
    if status == 200 { body["rateLimit"]["module"].as_str().unwrap().to_string() } else { format!("{status} {body}") }
}

#[tokio::test]
async fn uploads_are_validated_versioned_and_for_admins_only() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.user().await;

    let r = app.upload(&user.token, "team-limit", "", component("fixed-window")).await;
    assert_eq!(r.status(), 403, "a user cannot upload");
    let r = app.upload(&admin.token, "team-limit", "?capacity=10&window_seconds=60", component("fixed-window")).await;
    assert_eq!(r.status(), 201);
    let first = json_of(r).await;
    assert_eq!(first["version"], 1);
    assert_eq!(first["kind"], "rate-limiter");
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64);
    let again =
        app.upload(&admin.token, "team-limit", "?capacity=10&window_seconds=60", component("fixed-window")).await;
    assert_eq!(again.status(), 200, "the same bytes are the same version");
    assert_eq!(json_of(again).await, first);
    let r = app.upload(&admin.token, "team-limit", "?capacity=1", component("sliding-window")).await;
    assert_eq!(r.status(), 400, "configure() must accept the smoke-test parameters");
    assert!(json_of(r).await["error"]["message"].as_str().unwrap().contains("configure"));
    let r = app.upload(&admin.token, "team-limit", "", component("model-pricing")).await;
    assert_eq!(r.status(), 409, "a name keeps its kind");
    let r = app.upload(&admin.token, "Bad_Name", "", component("fixed-window")).await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/v1/policies/team-limit"))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "uploads are application/wasm");

    let before = json_of(app.get("/api/v1/policies", Some(&admin.token)).await).await;
    let hostile = ["infinite-loop", "memory-bomb", "deep-recursion", "trap", "nonsense-verdict", "forbidden-import"];
    for name in hostile {
        let r = app.upload(&admin.token, "hostile", "?capacity=10&window_seconds=60", fixture(name)).await;
        assert_eq!(r.status(), 400, "{name} must be refused");
        let body = json_of(r).await;
        assert_eq!(body["error"]["code"], "invalid_module", "{name}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = app.upload(&admin.token, "hostile", "", b"not a component".to_vec()).await;
    assert_eq!(r.status(), 400);
    let r = app.upload(&admin.token, "hostile", "", vec![0; 4 * 1024 * 1024 + 1]).await;
    assert_eq!(r.status(), 413, "a component is at most 4 MiB");
    let after = json_of(app.get("/api/v1/policies", Some(&admin.token)).await).await;
    assert_eq!(before, after, "a refused upload stores nothing");
    assert!(app.get("/api/v1/policies", Some(&user.token)).await.status() == 403);

    let listed = after.as_array().unwrap();
    let team = listed.iter().find(|m| m["name"] == "team-limit").expect("listed");
    assert_eq!(team["activeVersion"], Value::Null, "an upload is not active until activated");
    assert_eq!(team["versions"][0]["sha256"], first["sha256"]);
    let builtin = listed.iter().find(|m| m["name"] == "leaky-bucket").expect("the directory's modules are listed");
    assert_eq!(builtin["activeVersion"], 1);
    assert_eq!(builtin["versions"][0]["source"], "leaky-bucket.wasm");
}

#[tokio::test]
async fn activate_and_rollback_change_what_decides() {
    let app = spawn_app_with(no_rate_limit).await;
    let admin = app.admin().await;
    let user = app.user().await;
    let params = "?capacity=1000000&window_seconds=60";
    assert_eq!(app.upload(&admin.token, "swap", params, component("fixed-window")).await.status(), 201);
    assert_eq!(app.upload(&admin.token, "swap", params, component("sliding-window")).await.status(), 201);
    let r = app
        .put("/api/v1/policies/bindings", &admin.token, json!([{ "provider": "acme", "module": "swap", "params": {} }]))
        .await;
    assert_eq!(r.status(), 400, "a module must be active before it is bound");
    assert_eq!(activate(&app, &admin, "swap", 1).await.status(), 200);
    bind(
        &app,
        &admin,
        json!([{ "provider": "acme", "module": "swap", "params": { "capacity": 1000000, "window_seconds": 60 } }]),
    )
    .await;
    assert_eq!(decided_by(&app, &user, "acme").await, "swap@1");

    let r = activate(&app, &admin, "swap", 2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await, json!({ "name": "swap", "version": 2, "previousVersion": 1 }));
    assert_eq!(decided_by(&app, &user, "acme").await, "swap@2");
    let r = rollback(&app, &admin, "swap").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await, json!({ "name": "swap", "version": 1, "previousVersion": 2 }));
    assert_eq!(decided_by(&app, &user, "acme").await, "swap@1");
    assert_eq!(rollback(&app, &admin, "swap").await.status(), 409, "nothing earlier than the first activation");
    assert_eq!(rollback(&app, &admin, "nothing-here").await.status(), 404);
    assert_eq!(activate(&app, &admin, "swap", 99).await.status(), 404);

    // A version the binding's parameters do not configure is refused, and nothing changes.
    let r = app.upload(&admin.token, "swap", "?capacity=10&refill_rate_per_second=1", component("token-bucket")).await;
    assert_eq!(r.status(), 201);
    let r = activate(&app, &admin, "swap", 3).await;
    assert_eq!(r.status(), 400);
    assert!(json_of(r).await["error"]["message"].as_str().unwrap().contains("acme"), "names the binding");
    assert_eq!(decided_by(&app, &user, "acme").await, "swap@1");
    let status = json_of(app.get("/api/v1/tokens/status", None).await).await;
    let acme = status["policies"].as_array().unwrap().iter().find(|p| p["provider"] == "acme").cloned().unwrap();
    assert_eq!((acme["module"].clone(), acme["version"].clone()), (json!("swap"), json!(1)));
}

#[tokio::test]
async fn rate_state_survives_a_swap_between_versions_of_one_strategy() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.user().await;
    let params = "?capacity=10&window_seconds=3600";
    assert_eq!(app.upload(&admin.token, "hourly", params, component("fixed-window")).await.status(), 201);
    let v2 = with_custom_section(component("fixed-window"), "v2");
    assert_eq!(json_of(app.upload(&admin.token, "hourly", params, v2).await).await["version"], 2);
    assert_eq!(activate(&app, &admin, "hourly", 1).await.status(), 200);
    bind(
        &app,
        &admin,
        json!([{ "provider": "acme", "module": "hourly", "params": { "capacity": 10, "window_seconds": 3600 } }]),
    )
    .await;
    assert_eq!(app.consume(&user, "acme", 10).await.status(), 200);
    assert_eq!(app.consume(&user, "acme", 1).await.status(), 429);
    assert_eq!(activate(&app, &admin, "hourly", 2).await.status(), 200);
    let r = app.consume(&user, "acme", 1).await;
    assert_eq!(r.status(), 429, "the window's 10 tokens stay spent under version 2");
    // A different strategy starts afresh (its state means something else).
    let r = app.upload(&admin.token, "hourly", params, component("sliding-window")).await;
    assert_eq!(json_of(r).await["version"], 3);
    assert_eq!(activate(&app, &admin, "hourly", 3).await.status(), 200);
    assert_eq!(app.consume(&user, "acme", 10).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_swaps_while_64_clients_consume_fail_no_request() {
    let app = Arc::new(spawn_app_with(no_rate_limit).await);
    let admin = app.admin().await;
    let params = "?capacity=1000000000&window_seconds=60";
    assert_eq!(app.upload(&admin.token, "swap", params, component("fixed-window")).await.status(), 201);
    assert_eq!(app.upload(&admin.token, "swap", params, component("sliding-window")).await.status(), 201);
    assert_eq!(activate(&app, &admin, "swap", 1).await.status(), 200);
    bind(
        &app,
        &admin,
        json!([{ "provider": "acme", "module": "swap", "params": { "capacity": 1000000000, "window_seconds": 60 } }]),
    )
    .await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(app.user().await);
    }

    // `changes` counts completed changes; after change k the active version is 2 if k is odd.
    let changes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let version_after = |k: u64| if k % 2 == 1 { 2 } else { 1 };
    let mut clients = Vec::new();
    for i in 0..64 {
        let (app, user, changes, stop) =
            (Arc::clone(&app), users[i % 8].clone(), Arc::clone(&changes), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = changes.load(Ordering::SeqCst);
                let r = app.consume(&user, "acme", 1).await;
                let after = changes.load(Ordering::SeqCst);
                let status = r.status();
                let body = json_of(r).await;
                assert_eq!(status, 200, "a request failed during swaps: {body}");
                let module = body["rateLimit"]["module"].as_str().unwrap().to_string();
                let version: u64 = module.strip_prefix("swap@").unwrap().parse().unwrap();
                // In force at some point while the request ran: after `before` changes, or any
                // later one up to the change that was in progress when it was answered.
                let possible: Vec<u64> = (before..=after + 1).map(version_after).collect();
                assert!(possible.contains(&version), "answered by {module} between changes {before} and {after}");
                seen.push(version);
            }
            seen
        }));
    }
    for round in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(activate(&app, &admin, "swap", 2).await.status(), 200, "round {round}");
        changes.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(rollback(&app, &admin, "swap").await.status(), 200, "round {round}");
        changes.fetch_add(1, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.expect("client"));
    }
    assert!(seen.len() > 200, "the clients kept consuming: {}", seen.len());
    assert!(seen.contains(&1) && seen.contains(&2), "both versions answered");
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger").fetch_one(&app.pool).await.unwrap();
    assert_eq!(total as usize, seen.len(), "every answered consume is in the ledger");
}

#[tokio::test]
async fn a_shadow_is_counted_and_never_enforced() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.user().await;
    bind(
        &app,
        &admin,
        json!([{ "provider": "acme", "module": "fixed-window", "params": { "capacity": 1000, "window_seconds": 3600 },
                 "shadow": { "module": "fixed-window", "params": { "capacity": 5, "window_seconds": 3600 } } }]),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(app.consume(&user, "acme", 1).await.status(), 200, "the shadow does not refuse");
    }
    let series = "leaky_policy_shadow_verdicts_total";
    assert_eq!(app.metric(series, &["provider=\"acme\"", "verdict=\"would_allow\""]).await, 5.0);
    assert_eq!(app.metric(series, &["provider=\"acme\"", "verdict=\"would_refuse\""]).await, 5.0);
    let status = json_of(app.get("/api/v1/tokens/status", None).await).await;
    let acme = status["policies"].as_array().unwrap().iter().find(|p| p["provider"] == "acme").cloned().unwrap();
    assert_eq!(acme["shadow"], "fixed-window@1");
    let stored = json_of(app.get("/api/v1/policies/bindings", Some(&admin.token)).await).await;
    let acme = stored.as_array().unwrap().iter().find(|b| b["provider"] == "acme").cloned().unwrap();
    assert_eq!(acme["shadow"]["params"]["capacity"], "5");
}

#[tokio::test]
async fn a_bound_quota_rule_prices_and_refuses() {
    let app = spawn_app_with(no_rate_limit).await;
    let admin = app.admin().await;
    let user = app.user().await;
    bind(
        &app,
        &admin,
        json!([{ "provider": "acme", "module": "model-pricing", "params": { "model.gpt-4o": 2.5, "deny": "banned-*" } }]),
    )
    .await;
    let consume = |model: &str| {
        app.post(
            "/api/v1/tokens/consume",
            Some(&user.token),
            json!({ "userId": user.id, "provider": "acme", "tokens": 10, "model": model }),
        )
    };
    let r = consume("gpt-4o").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["quota"]["used"], 25, "10 tokens at 2.5 each");
    let r = consume("banned-model").await;
    assert_eq!(r.status(), 403);
    let body = json_of(r).await;
    assert_eq!(body["error"]["code"], "policy_denied", "{body}");
    let quota = json_of(app.get("/api/v1/tokens/quota?provider=acme", Some(&user.token)).await).await;
    assert_eq!(quota["used"], 25, "a refused request spends nothing");
}

#[tokio::test]
async fn bindings_are_validated_whole() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.user().await;
    let before = json_of(app.get("/api/v1/policies/bindings", Some(&admin.token)).await).await;
    let refused = [
        json!([{ "provider": "acme", "module": "no-such-module" }]),
        json!([{ "provider": "acme", "module": "fixed-window", "params": { "capacity": 0, "window_seconds": 60 } }]),
        json!([{ "provider": "acme", "module": "fixed-window", "params": { "capacity": 5, "window_seconds": 60 } },
               { "provider": "acme", "module": "leaky-bucket", "params": { "capacity": 5, "leak_rate_per_second": 1 } }]),
        json!([{ "provider": "acme", "module": "model-pricing", "shadow": { "module": "fixed-window" } }]),
        json!([{ "provider": "Not A Provider", "module": "fixed-window" }]),
        json!([{ "provider": "acme", "module": "fixed-window", "params": { "capacity": [1] } }]),
        json!({ "provider": "acme" }),
    ];
    for body in refused {
        let r = app.put("/api/v1/policies/bindings", &admin.token, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
    }
    let r = app.put("/api/v1/policies/bindings", &user.token, json!([])).await;
    assert_eq!(r.status(), 403);
    let after = json_of(app.get("/api/v1/policies/bindings", Some(&admin.token)).await).await;
    assert_eq!(before, after, "a refused change changes nothing");
    assert_eq!(before[0]["source"], "bindings.toml", "the directory's manifest is a source of bindings");
}
