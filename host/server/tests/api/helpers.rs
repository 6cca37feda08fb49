//! `spawn_app` and a small client for the API tests.

use std::path::PathBuf;

use leaky_server::settings::{Secret, Settings};
use leaky_server::{Application, bootstrap};
use reqwest::{Client, Response};
use serde_json::{Value, json};
use uuid::Uuid;

/// A running app and what tests need to reach it.
pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub pool: leaky_store::Pool,
    /// The app's database, to read quotas as the app does (with spend pending write-back).
    pub db: leaky_store::Database,
    pub data: tempfile::TempDir,
}

/// The workspace's built policies.
pub fn policies_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../../policies");
    assert!(dir.join("leaky-bucket.wasm").exists(), "build the components first: `cargo xtask guests`");
    dir
}

/// Settings for a test: port 0, a fresh data directory, the workspace's policies.
pub fn test_settings(data: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.addr = "127.0.0.1:0".parse().expect("addr");
    s.data_dir = data.to_path_buf();
    s.policies.dir = policies_dir();
    s.policies.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"));
    s.auth.jwt_secret = Some(Secret::new("a test secret of at least thirty-two characters"));
    s
}

/// Settings for a process that shares its SQLite file with others, standing in for replicas
/// (which in production share PostgreSQL): the quota counters written in every commit, so no
/// process holds spend pending and the file may be claimed by several.
pub fn on_a_shared_file(s: &mut Settings) {
    s.database.quota_writeback_ms = 0;
}

/// Spawns the app with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the app after `adjust` changed the settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings(data.path());
    adjust(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let db = app.state().db.clone();
    let pool = db.pool().clone();
    tokio::spawn(app.run_until_stopped());
    TestApp { base, client: Client::new(), pool, db, data }
}

/// A registered, logged-in user.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.client.put(self.url(path)).bearer_auth(token).json(&body).send().await.expect("request sent")
    }

    /// Sends a registration past the body limit through `client` and checks that it is refused
    /// with 413 in the API's error format.
    pub async fn assert_oversized_body_refused(&self, client: &Client) {
        let r = client
            .post(self.url("/api/v1/auth/register"))
            .header("content-type", "application/json")
            .body(format!("{{\"username\": \"{}\"}}", "x".repeat(200_000)))
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status(), 413);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "payload_too_large");
    }

    /// Registers and logs in a fresh user.
    pub async fn user(&self) -> User {
        let name = format!("u{}", Uuid::new_v4().simple());
        let r = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse"}),
            )
            .await;
        assert_eq!(r.status(), 201, "register");
        self.login(&name, "correct horse").await
    }

    pub async fn login(&self, username: &str, password: &str) -> User {
        let r = self.post("/api/v1/auth/login", None, json!({"username": username, "password": password})).await;
        assert_eq!(r.status(), 200, "login");
        let body: Value = r.json().await.expect("json");
        User {
            id: body["userId"].as_str().expect("userId").parse().expect("uuid"),
            token: body["accessToken"].as_str().expect("token").into(),
        }
    }

    /// An admin made the way an operator makes one.
    pub async fn admin(&self) -> User {
        let name = format!("admin{}", Uuid::new_v4().simple());
        bootstrap::create_admin(&self.pool, &name, "admin password").await.expect("admin");
        self.login(&name, "admin password").await
    }

    /// Consumes `tokens` for `user` as that user.
    pub async fn consume(&self, user: &User, provider: &str, tokens: u64) -> Response {
        self.post(
            "/api/v1/tokens/consume",
            Some(&user.token),
            json!({"userId": user.id, "provider": provider, "tokens": tokens}),
        )
        .await
    }

    /// Sets a quota as `admin`.
    pub async fn set_quota(&self, admin: &User, owner_type: &str, owner: Uuid, provider: &str, limit: i64) {
        let r = self
            .put("/api/v1/quotas", &admin.token, json!({"ownerType": owner_type, "ownerId": owner, "provider": provider, "limit": limit, "period": "none"}))
            .await;
        assert_eq!(r.status(), 200, "set quota: {:?}", r.text().await);
    }

    /// Uploads a component as `admin` (`query` holds smoke-test parameters, e.g. `?capacity=5`).
    pub async fn upload(&self, token: &str, name: &str, query: &str, bytes: Vec<u8>) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/policies/{name}{query}")))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .expect("request sent")
    }

    /// The sum of the samples of metric `name` whose labels include every one of `labels`
    /// (each written `key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics", None).await.text().await.expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The error code of an error answer.
    pub async fn error_code(r: Response) -> String {
        let body: Value = r.json().await.expect("json error");
        body["error"]["code"].as_str().expect("error.code").to_string()
    }
}

/// Settings with a rate limit too generous to interfere.
pub fn no_rate_limit(s: &mut Settings) {
    s.token.bucket.capacity = 1_000_000_000;
    s.token.bucket.leak_rate_per_second = 1_000_000_000.0;
}
