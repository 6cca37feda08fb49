//! Policy changes that arrive without a request to this process: edits of the policy directory
//! (hot reload) and changes made through another replica.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, User, on_a_shared_file, policies_dir, spawn_app_with};
use crate::policies::{component, with_custom_section};

/// How the rate limit of `provider` answers now: `module capacity`.
async fn answer(app: &TestApp, user: &User, provider: &str) -> String {
    let r = app.consume(user, provider, 1).await;
    let body: Value = r.json().await.expect("json");
    format!("{} {}", body["rateLimit"]["module"].as_str().unwrap_or("?"), body["rateLimit"]["capacity"])
}

/// Polls until `provider` answers `wanted`; returns how long it took, or fails after `limit`.
async fn wait_for(app: &TestApp, user: &User, provider: &str, wanted: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = answer(app, user, provider).await;
        if now == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "still `{now}` after {limit:?}, wanted `{wanted}`");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn manifest(dir: &Path, capacity: u64) {
    let text = format!(
        "[[binding]]\nprovider = \"acme\"\nmodule = \"fixed-window\"\nparams = {{ capacity = {capacity}, window_seconds = 60 }}\n"
    );
    write_atomically(dir, "acme.toml", text.as_bytes());
}

/// Writes a file the way deployment tools do: a temporary name, then a rename.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn the_policy_directory_is_hot_reloaded_and_a_bad_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for module in ["leaky-bucket", "token-bucket", "fixed-window"] {
        std::fs::copy(policies_dir().join(format!("{module}.wasm")), dir.path().join(format!("{module}.wasm")))
            .unwrap();
    }
    manifest(dir.path(), 100);
    let policies = dir.path().to_path_buf();
    let app = spawn_app_with(move |s| s.policies.dir = policies).await;
    let user = app.user().await;
    assert_eq!(answer(&app, &user, "acme").await, "fixed-window@1 100");

    manifest(dir.path(), 200);
    let took = wait_for(&app, &user, "acme", "fixed-window@1 200", Duration::from_secs(1)).await;
    eprintln!("a manifest edit took effect in {took:?}");

    // A new component for a module: a new version, activated.
    write_atomically(dir.path(), "fixed-window.wasm", &with_custom_section(component("fixed-window"), "v2"));
    let took = wait_for(&app, &user, "acme", "fixed-window@2 200", Duration::from_secs(1)).await;
    eprintln!("a new component took effect in {took:?}");

    // Invalid changes: refused, counted, and the set in force stays.
    let refused = "leaky_policy_reloads_total";
    let before = app.metric(refused, &["outcome=\"refused\""]).await;
    write_atomically(dir.path(), "acme.toml", b"[[binding]]\nprovider = \"acme\"\nmodule = \"no-such-module\"\n");
    wait_for_metric(&app, refused, "outcome=\"refused\"", before + 1.0).await;
    assert_eq!(answer(&app, &user, "acme").await, "fixed-window@2 200");
    write_atomically(dir.path(), "broken.wasm", b"not a component");
    wait_for_metric(&app, refused, "outcome=\"refused\"", before + 2.0).await;
    assert_eq!(answer(&app, &user, "acme").await, "fixed-window@2 200");
    std::fs::remove_file(dir.path().join("broken.wasm")).unwrap();
    manifest(dir.path(), 300);
    wait_for(&app, &user, "acme", "fixed-window@2 300", Duration::from_secs(1)).await;

    // Removing the manifest removes its bindings: acme falls back to the default.
    std::fs::remove_file(dir.path().join("acme.toml")).unwrap();
    wait_for(&app, &user, "acme", "leaky-bucket@1 1000", Duration::from_secs(1)).await;
}

async fn wait_for_metric(app: &TestApp, name: &str, label: &str, at_least: f64) {
    let started = Instant::now();
    while app.metric(name, &[label]).await < at_least {
        assert!(started.elapsed() < Duration::from_secs(2), "{name}{{{label}}} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_change_on_one_replica_is_enforced_by_the_other_within_two_seconds() {
    let first = spawn_app_with(on_a_shared_file).await;
    let shared = format!("sqlite://{}", first.data.path().join("leaky.db").display());
    let second = spawn_app_with(move |s| {
        on_a_shared_file(s);
        s.database.url = Some(shared);
    })
    .await;
    let admin = first.admin().await;
    let user = first.user().await;
    let params = "?capacity=100&window_seconds=60";
    assert_eq!(first.upload(&admin.token, "team", params, component("fixed-window")).await.status(), 201);
    assert_eq!(first.upload(&admin.token, "team", params, component("sliding-window")).await.status(), 201);
    let r = first.post("/api/v1/policies/team/activate", Some(&admin.token), json!({ "version": 1 })).await;
    assert_eq!(r.status(), 200);
    let binding =
        json!([{ "provider": "acme", "module": "team", "params": { "capacity": 100, "window_seconds": 60 } }]);
    assert_eq!(first.put("/api/v1/policies/bindings", &admin.token, binding).await.status(), 200);
    wait_for(&second, &user, "acme", "team@1 100", Duration::from_secs(2)).await;

    // Activate on the first; the second follows.
    let r = first.post("/api/v1/policies/team/activate", Some(&admin.token), json!({ "version": 2 })).await;
    assert_eq!(r.status(), 200);
    let took = wait_for(&second, &user, "acme", "team@2 100", Duration::from_secs(2)).await;
    eprintln!("the second replica converged in {took:?}");
    // And a rollback made through the second reaches the first.
    let r = second.post("/api/v1/policies/team/rollback", Some(&admin.token), json!({})).await;
    assert_eq!(r.status(), 200);
    wait_for(&first, &user, "acme", "team@1 100", Duration::from_secs(2)).await;

    // A replica that starts later loads the active set from the database.
    let shared = format!("sqlite://{}", first.data.path().join("leaky.db").display());
    let third = spawn_app_with(move |s| {
        on_a_shared_file(s);
        s.database.url = Some(shared);
    })
    .await;
    assert_eq!(answer(&third, &user, "acme").await, "team@1 100");
}
