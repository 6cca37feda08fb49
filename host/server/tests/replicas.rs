//! Two `leaky serve` processes on different ports sharing PostgreSQL, Redis and Kafka behave as
//! one service: 10,000 one-token consumes at concurrency 256, spread over both, against a quota
//! of 5,000 grant exactly 5,000 with no 5xx; every granted consume reaches the analytics store
//! through Kafka exactly once; and a 100-tokens-per-second rate limit holds across both.
//!
//! The services are the ones the other tests use: PostgreSQL at `LEAKY_TEST_POSTGRES_URL`
//! (a fresh database of the test's own), Redis at `LEAKY_TEST_REDIS_URL` (keys under a prefix
//! of the test's own) and the broker at `LEAKY_TEST_KAFKA_BROKERS` (topics under a prefix of the
//! test's own). Without any of them the test fails, unless the environment declares that one
//! absent (`LEAKY_TEST_POSTGRES=absent`, ...); then it says it skipped.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const QUOTA: usize = 5_000;
const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 256;

fn declared_absent(service: &str) -> bool {
    let absent = std::env::var(format!("LEAKY_TEST_{service}")).is_ok_and(|v| v == "absent");
    if absent {
        eprintln!("SKIPPED: LEAKY_TEST_{service}=absent declares it absent; this test needs it");
    }
    absent
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What both replicas share.
struct Shared {
    database: String,
    redis: String,
    brokers: String,
    prefix: String,
}

/// A replica, killed when dropped.
struct Replica {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(shared: &Shared) -> Self {
        let policies =
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
                .join("../../policies");
        assert!(policies.join("token-bucket.wasm").exists(), "build the components first: `cargo xtask guests`");
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_leaky"))
            .args(["serve", "--config", "/nonexistent/leaky.toml"])
            .env("LEAKY_DATA_DIR", data.path())
            .env("LEAKY_SERVER__ADDR", format!("127.0.0.1:{port}"))
            .env("LEAKY_DATABASE__URL", &shared.database)
            .env("LEAKY_REDIS__URL", &shared.redis)
            .env("LEAKY_REDIS__KEY_PREFIX", format!("{}:", shared.prefix))
            .env("LEAKY_KAFKA__BROKERS", &shared.brokers)
            .env("LEAKY_KAFKA__TOPIC_PREFIX", format!("{}.", shared.prefix))
            .env("LEAKY_KAFKA__GROUP_ID", &shared.prefix)
            .env("LEAKY_AUTH__JWT_SECRET", format!("{}-a-secret-both-replicas-share", shared.prefix))
            .env("LEAKY_BOOTSTRAP_ADMIN", "operator:correct horse battery")
            .env("LEAKY_POLICIES__DIR", &policies)
            .env("LEAKY_POLICIES__SYNC_INTERVAL_MS", "200")
            .env("LEAKY_QUOTA__DEFAULT_LIMIT", QUOTA.to_string())
            .env("LEAKY_TOKEN__BUCKET__CAPACITY", "1000000000")
            .env("LEAKY_TOKEN__BUCKET__LEAK_RATE_PER_SECOND", "1000000000")
            .env("LEAKY_LOG", "warn")
            .stdout(Stdio::inherit())
            .spawn()
            .expect("leaky serve starts");
        Self { child, base: format!("http://127.0.0.1:{port}"), _data: data }
    }

    async fn ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if client.get(format!("{}/health/ready", self.base)).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the replica at {} did not become ready", self.base);
    }
}

/// The JSON body answered to `request`.
async fn body(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn login(client: &reqwest::Client, base: &str, username: &str, password: &str) -> (String, String) {
    let credentials = json!({ "username": username, "password": password });
    let body = body(client.post(format!("{base}/api/v1/auth/login")).json(&credentials)).await;
    (body["accessToken"].as_str().unwrap().to_string(), body["userId"].as_str().unwrap().to_string())
}

async fn register(client: &reqwest::Client, base: &str, username: &str) -> (String, String) {
    let r = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({ "username": username, "email": format!("{username}@example.com"), "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    login(client, base, username, "correct horse").await
}

/// Sends `body` as JSON to `url` with `method`, as the holder of `token`.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Value,
) -> reqwest::Response {
    client.request(method, url).bearer_auth(token).json(&body).send().await.unwrap()
}

/// Tallies of answers.
#[derive(Default)]
struct Tally {
    granted: AtomicUsize,
    quota_refused: AtomicUsize,
    rate_refused: AtomicUsize,
    other: AtomicUsize,
}

/// `workers` tasks send one-token consumes for `provider`, alternating between the replicas
/// and spread over `users`, until `budget` requests were sent or `until` passes.
async fn hammer(
    client: &reqwest::Client,
    bases: &[String; 2],
    users: &[(String, String)],
    provider: &str,
    workers: usize,
    budget: usize,
    until: Instant,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, base) = (client.clone(), bases[w % 2].clone());
            let (token, user) = users[w % users.len()].clone();
            let provider = provider.to_string();
            let (tally, sent) = (Arc::clone(&tally), Arc::clone(&sent));
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < budget && Instant::now() < until {
                    let r = client
                        .post(format!("{base}/api/v1/tokens/consume"))
                        .bearer_auth(&token)
                        .json(&json!({ "userId": user, "provider": provider, "tokens": 1 }))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let counter = match (status, body["error"]["code"].as_str()) {
                        (200, _) => &tally.granted,
                        (429, Some("insufficient_quota")) => &tally.quota_refused,
                        (429, Some("rate_limit_exceeded")) => {
                            if provider != "metered" {
                                eprintln!("rate refusal: {body}");
                            }
                            &tally.rate_refused
                        }
                        _ => {
                            eprintln!("unexpected answer {status}: {body}");
                            &tally.other
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforce_one_quota_and_one_rate_limit() {
    if declared_absent("POSTGRES") || declared_absent("REDIS") || declared_absent("KAFKA") {
        return;
    }
    let server = std::env::var("LEAKY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let prefix = format!("replicas{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| panic!("PostgreSQL at {server}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {prefix}")).execute(&mut admin).await.unwrap();
    let database = format!("{}/{prefix}", server.rsplit_once('/').unwrap().0);
    let shared = Shared {
        database: database.clone(),
        redis: std::env::var("LEAKY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        brokers: std::env::var("LEAKY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        prefix: prefix.clone(),
    };

    let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();
    // Both start at once on the empty database: one migrates and imports the policy directory,
    // the other waits for it and finds it done.
    let (first, second) = (Replica::start(&shared), Replica::start(&shared));
    first.ready(&client).await;
    second.ready(&client).await;
    let bases = [first.base.clone(), second.base.clone()];

    // One user's quota of 5,000, spent through both replicas at once.
    let spender = register(&client, &bases[0], "spender").await;
    let started = Instant::now();
    let far = started + Duration::from_secs(600);
    let tally = hammer(&client, &bases, std::slice::from_ref(&spender), "openai", CONCURRENCY, REQUESTS, far).await;
    let granted = tally.granted.load(Ordering::Relaxed);
    let refused = tally.quota_refused.load(Ordering::Relaxed);
    println!(
        "{REQUESTS} consumes over two replicas in {:.1} s: {granted} granted, {refused} refused for the quota, {} \
         for the rate, {} other",
        started.elapsed().as_secs_f64(),
        tally.rate_refused.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed)
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "every answer is a grant or a refusal; no 5xx");
    assert_eq!(granted, QUOTA, "exactly the quota is granted");
    // A request that lost the rate state's compare-and-set to the other replica round after
    // round is told to retry (429, Retry-After); that must stay rare.
    assert!(REQUESTS - granted - refused <= REQUESTS / 100, "too many requests lost the compare-and-set");

    let mut db = PgConnection::connect(&database).await.unwrap();
    let (used, limit): (i64, i64) = sqlx::query_as(
        "SELECT used, quota_limit FROM quotas WHERE owner_type = 'user' AND owner_id = $1 AND provider = 'openai'",
    )
    .bind(&spender.1)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((used, limit), (QUOTA as i64, QUOTA as i64));
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'consume' AND user_id = $1")
        .bind(&spender.1)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(ledger, QUOTA as i64, "one ledger row per grant");

    // Every granted consume reaches analytics through Kafka, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counted: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE user_id = $1 AND outcome = 'allowed'")
                .bind(&spender.1)
                .fetch_one(&mut db)
                .await
                .unwrap();
        if counted == QUOTA as i64 {
            break;
        }
        assert!(counted < QUOTA as i64, "{counted} events counted for {QUOTA} grants");
        if Instant::now() >= deadline {
            let unrelayed: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(events), 0) FROM outbox WHERE seq > (SELECT last_seq FROM outbox_cursor WHERE id = 1)",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            panic!("only {counted} of {QUOTA} grants reached analytics through Kafka ({unrelayed} events not relayed)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // An org quota set on one replica binds both at once, though the other still has the
    // members cached as in no org.
    let (operator, _) = login(&client, &bases[0], "operator", "correct horse battery").await;
    let org_url = format!("{}/api/v1/orgs", bases[0]);
    let org: Value =
        send(&client, Method::POST, org_url, &operator, json!({ "name": "shared" })).await.json().await.unwrap();
    let org_id = org["orgId"].as_str().unwrap().to_string();
    // The members spend first, so both replicas cache them as members of no org.
    let mut members = Vec::new();
    for n in 0..3 {
        members.push(register(&client, &bases[n % 2], &format!("member{n}")).await);
    }
    let warm = hammer(&client, &bases, &members, "openai", 6, 6, far).await;
    assert_eq!(warm.granted.load(Ordering::Relaxed), 6, "no org yet");
    for member in &members {
        let url = format!("{}/api/v1/orgs/{org_id}/members", bases[0]);
        let r = send(&client, Method::POST, url, &operator, json!({ "userId": member.1 })).await;
        assert_eq!(r.status(), 204);
    }
    let quota = json!({ "ownerType": "org", "ownerId": org_id, "provider": "openai", "limit": 300, "period": "none" });
    let r = send(&client, Method::PUT, format!("{}/api/v1/quotas", bases[0]), &operator, quota).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let tally = hammer(&client, &bases, &members, "openai", 48, 900, far).await;
    println!(
        "org phase: {} granted of 900 against an org quota of 300 set on one replica",
        tally.granted.load(Ordering::Relaxed)
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "no 5xx");
    assert_eq!(tally.granted.load(Ordering::Relaxed), 300, "exactly the org quota is granted");

    // A rate limit of 100 tokens per second, bound on one replica, holds across both.
    let binding = json!([{ "provider": "metered", "module": "token-bucket",
        "params": { "capacity": 100, "refill_rate_per_second": 100 } }]);
    let r = send(&client, Method::PUT, format!("{}/api/v1/policies/bindings", bases[0]), &operator, binding).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let metered = register(&client, &bases[1], "metered").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = body(client.get(format!("{}/api/v1/tokens/status?provider=metered", bases[1]))).await;
        let policies = status["policies"].as_array().cloned().unwrap_or_default();
        if policies.iter().any(|p| p["provider"] == "metered" && p["module"].as_str().unwrap_or("") == "token-bucket") {
            break;
        }
        assert!(Instant::now() < deadline, "the second replica did not take the binding: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let tally = hammer(&client, &bases, std::slice::from_ref(&metered), "metered", 64, usize::MAX, until).await;
    let seconds = started.elapsed().as_secs_f64();
    let granted = tally.granted.load(Ordering::Relaxed) as f64;
    let ceiling = 100.0 + 100.0 * seconds;
    println!(
        "rate phase: {granted} granted in {seconds:.2} s over two replicas (the limit allows at most {ceiling:.0}); {} \
         refused for the rate",
        tally.rate_refused.load(Ordering::Relaxed)
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "no 5xx");
    assert!(granted <= ceiling, "{granted} granted in {seconds:.2} s: the limit allows {ceiling:.0}");
    assert!(granted >= 0.5 * ceiling, "{granted} granted in {seconds:.2} s: the limit allows {ceiling:.0}");

    drop((first, second));
    db.close().await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {prefix} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}
