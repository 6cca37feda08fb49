//! Rate state shared through Redis: two replicas hold one limit, and a Redis that dies under
//! load gives the configured behaviour (fail closed or fail open on a local share), no 5xx, and
//! normal service again soon after it returns.
//!
//! The shared Redis is `LEAKY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); the tests that
//! kill Redis start their own `redis-server` on a free port. Without Redis they fail, unless
//! `LEAKY_TEST_REDIS=absent` declares it absent; then they print that they skipped.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use leaky_server::settings::{Settings, WhenUnavailable};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, User, on_a_shared_file, spawn_app_with};

fn redis_absent() -> bool {
    let absent = std::env::var("LEAKY_TEST_REDIS").is_ok_and(|v| v == "absent");
    if absent {
        eprintln!("SKIPPED: LEAKY_TEST_REDIS=absent declares Redis absent");
    }
    absent
}

fn shared_redis(s: &mut Settings) {
    s.redis.url = Some(std::env::var("LEAKY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
}

/// A `redis-server` of the test's own, on a free port.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (install Redis, or set LEAKY_TEST_REDIS=absent)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(5), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `calls` and `failed_calls` of `command` (lower case) in this Redis's `INFO commandstats`.
    fn stats(&self, command: &str) -> (u64, u64) {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .expect("redis-cli runs (it comes with Redis)");
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("cmdstat_{command}:");
        let Some(line) = text.lines().find_map(|line| line.strip_prefix(&prefix)) else { return (0, 0) };
        let field = |name: &str| {
            line.split(',').find_map(|f| f.trim().strip_prefix(name)).map_or(0, |v| v.parse::<u64>().unwrap())
        };
        (field("calls="), field("failed_calls="))
    }

    /// Compare-and-set scripts this Redis ran (not counting a first call refused for an
    /// unknown script, which the client then loads). Compare-and-sets sent at once share one
    /// call; these tests send one at a time, so each call holds one.
    fn writes(&self) -> u64 {
        let (calls, failed) = self.stats("evalsha");
        calls - failed
    }

    /// `GET`s sent by clients: Redis also counts the one inside each script call (one a key).
    fn reads(&self) -> u64 {
        self.stats("get").0 - self.writes()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings of a replica: Redis-shared rate state under a key prefix of this test's own.
fn replica(prefix: &str, redis_url: Option<String>, adjust: impl FnOnce(&mut Settings)) -> impl FnOnce(&mut Settings) {
    let prefix = prefix.to_string();
    move |s: &mut Settings| {
        shared_redis(s);
        if let Some(url) = redis_url {
            s.redis.url = Some(url);
        }
        s.redis.key_prefix = prefix;
        s.redis.timeout_ms = 100;
        s.redis.breaker_failures = 3;
        s.redis.breaker_cooldown_ms = 200;
        adjust(s);
    }
}

fn token_bucket(capacity: u64, rate: f64) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.token.bucket.strategy = "token-bucket".into();
        s.token.bucket.capacity = capacity;
        s.token.bucket.leak_rate_per_second = rate;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_never_both_spend_the_same_capacity() {
    if redis_absent() {
        return;
    }
    let prefix = format!("leaky-test-{}:", Uuid::new_v4().simple());
    // 100 tokens and a refill of 0.001 per second: over this test, exactly 100 can be admitted.
    let first = spawn_app_with(replica(&prefix, None, |s| {
        token_bucket(100, 0.001)(s);
        on_a_shared_file(s);
    }))
    .await;
    let shared = format!("sqlite://{}", first.data.path().join("leaky.db").display());
    let second = spawn_app_with(replica(&prefix, None, move |s| {
        token_bucket(100, 0.001)(s);
        on_a_shared_file(s);
        s.database.url = Some(shared);
    }))
    .await;
    let user = first.user().await;
    let status: serde_json::Value = first.get("/api/v1/tokens/status", None).await.json().await.unwrap();
    assert_eq!(status["storage"]["rateState"], "redis");

    let (first, second) = (Arc::new(first), Arc::new(second));
    let mut clients = Vec::new();
    for i in 0..64 {
        let app = Arc::clone(if i % 2 == 0 { &first } else { &second });
        let user = user.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..8 {
                statuses.push(app.consume(&user, "openai", 1).await.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    let granted = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "no errors: {statuses:?}");
    assert_eq!(granted, 100, "512 requests over two replicas against one 100-token bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_decides_from_the_state_it_last_saw_and_learns_another_replicas_write_from_the_store() {
    if redis_absent() {
        return;
    }
    let redis = OwnRedis::start();
    // 10 tokens, refilling 0.001 per second: none come back during the test.
    let first = spawn_app_with(replica("leaky-test:", Some(redis.url()), |s| {
        token_bucket(10, 0.001)(s);
        on_a_shared_file(s);
    }))
    .await;
    let shared = format!("sqlite://{}", first.data.path().join("leaky.db").display());
    let second = spawn_app_with(replica("leaky-test:", Some(redis.url()), move |s| {
        token_bucket(10, 0.001)(s);
        on_a_shared_file(s);
        s.database.url = Some(shared);
    }))
    .await;
    let user = first.user().await;

    for _ in 0..5 {
        assert_eq!(first.consume(&user, "openai", 1).await.status(), 200);
    }
    assert_eq!(redis.writes(), 5);
    assert_eq!(redis.reads(), 1, "only the first decision read the state; the others started from what they wrote");
    for _ in 0..5 {
        assert_eq!(second.consume(&user, "openai", 1).await.status(), 200, "the other 5, from what the first wrote");
    }
    assert_eq!(redis.reads(), 2, "one read per replica");

    // The first still remembers 5 tokens left. Its write loses, the store answers the empty
    // bucket, and it refuses from that.
    assert_eq!(first.consume(&user, "openai", 1).await.status(), 429, "the bucket is empty");
    assert_eq!(second.consume(&user, "openai", 1).await.status(), 429);
    assert_eq!(redis.writes(), 11, "one lost compare-and-set, no retried write");
    assert_eq!(redis.reads(), 2, "and no read");
    let spent: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(tokens), 0) FROM ledger").fetch_one(&first.pool).await.unwrap();
    assert_eq!(spent, 10);
}

/// Consumes without pause from `clients` tasks until `stop`; returns every status.
fn load(
    app: &Arc<TestApp>,
    user: &User,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|_| {
            let (app, user, stop) = (Arc::clone(app), user.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(app.consume(&user, "openai", 1).await.status().as_u16());
                }
                statuses
            })
        })
        .collect()
}

async fn first_200_within(app: &TestApp, user: &User, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if app.consume(user, "openai", 1).await.status() == 200 {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no normal service {limit:?} after Redis came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_closed_without_5xx_and_recovers() {
    if redis_absent() {
        return;
    }
    let mut redis = OwnRedis::start();
    let app =
        Arc::new(spawn_app_with(replica("leaky-test:", Some(redis.url()), token_bucket(1_000_000_000, 1e9))).await);
    let admin = app.admin().await;
    let user = app.user().await;
    app.set_quota(&admin, "user", user.id, "openai", 5_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&app, &user, 16, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let trips = app.metric("leaky_breaker_trips_total", &["backend=\"redis\""]).await;
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status(), 503, "not ready without Redis");
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["checks"]["redis"], false);
    redis.restart();
    let recovered = first_200_within(&app, &user, Duration::from_secs(5)).await;
    eprintln!("normal service {recovered:?} after Redis came back");
    assert_eq!(app.get("/health/ready", None).await.status(), 200, "ready again");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }

    assert!(trips >= 1.0, "the breaker tripped");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "no 5xx while Redis was away");
    assert!(statuses.contains(&429), "refused (closed) while Redis was away");
    let granted = statuses.iter().filter(|s| **s == 200).count() as i64 + 1;
    let spent: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(tokens), 0) FROM ledger").fetch_one(&app.pool).await.unwrap();
    assert_eq!(spent, granted, "every 200 is in the ledger, and nothing else");
    assert!(spent <= 5_000, "the quota is never exceeded");
    let r = app.get(&format!("/api/v1/tokens/quota?provider=openai&userId={}", user.id), Some(&user.token)).await;
    let quota: serde_json::Value = r.json().await.unwrap();
    assert_eq!(quota["used"], json!(spent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_failing_open_enforces_its_share_of_the_limit() {
    if redis_absent() {
        return;
    }
    let mut redis = OwnRedis::start();
    // Two replicas share 10 tokens (refill 0.001/s); failing open, each may spend 5 alone.
    let app = spawn_app_with(replica("leaky-test:", Some(redis.url()), |s| {
        token_bucket(10, 0.001)(s);
        s.redis.when_unavailable = WhenUnavailable::FailOpen;
        s.redis.replicas = 2;
        // The spend of 4 below must be decided on Redis, or it lands in the local share instead.
        // A first call on a loaded machine can outlast 100 ms; a killed Redis refuses at once, so
        // a longer deadline does not slow what follows.
        s.redis.timeout_ms = 1_000;
    }))
    .await;
    let user = app.user().await;
    assert_eq!(app.consume(&user, "openai", 4).await.status(), 200, "4 of the shared 10");
    let fell_open = app.metric("leaky_rate_state_unavailable_total", &[]).await;
    assert_eq!(fell_open, 0.0, "the first spend was decided on Redis");
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(app.consume(&user, "openai", 1).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "the local share is 5: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    redis.restart();
    // Redis restarted empty: the shared bucket is full again (10), and it decides once more.
    first_200_within(&app, &user, Duration::from_secs(5)).await;
    let status: serde_json::Value = app.get("/api/v1/tokens/status", None).await.json().await.unwrap();
    assert_eq!(status["storage"]["rateState"], "redis");
}
