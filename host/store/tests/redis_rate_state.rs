//! The Redis rate-state store against a real Redis: compare-and-set semantics, expiry, no lost
//! update under concurrent writers, and the breaker when Redis is unreachable.
//!
//! Redis is `LEAKY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). A test that cannot reach
//! it fails, unless `LEAKY_TEST_REDIS=absent` declares Redis absent; then it says it skipped.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use leaky_store::rate_state::breaker::CircuitBreaker;
use leaky_store::rate_state::guarded::Guarded;
use leaky_store::rate_state::redis::RedisRateState;
use leaky_store::rate_state::{RateKey, RateStateError, SharedRateState, StoredRate, Swap};

async fn redis() -> Option<RedisRateState> {
    if std::env::var("LEAKY_TEST_REDIS").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_REDIS=absent declares Redis absent");
        return None;
    }
    let url = std::env::var("LEAKY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("leaky-test-{}:", uuid::Uuid::new_v4().simple());
    let store = RedisRateState::connect(&url, &prefix).await.unwrap_or_else(|e| {
        panic!("cannot reach Redis at {url}: {e} (start it, or set LEAKY_TEST_REDIS=absent to skip)")
    });
    Some(store)
}

fn key(subject: &str) -> RateKey {
    RateKey { subject: subject.into(), provider: "openai".into() }
}

fn rate(n: u64) -> StoredRate {
    StoredRate { strategy: "fixed-window".into(), words: [n, 0, 0, 0] }
}

#[tokio::test]
async fn compare_and_set_writes_only_over_the_expected_state_and_expires() {
    let Some(store) = redis().await else { return };
    let k = key("a");
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(store.compare_and_set(&k, None, &rate(1), 60_000).await.unwrap(), Swap::Stored);
    assert_eq!(
        store.compare_and_set(&k, None, &rate(2), 60_000).await.unwrap(),
        Swap::Lost(Some(rate(1))),
        "no longer absent: the stored state comes back instead"
    );
    assert_eq!(
        store.compare_and_set(&k, Some(&rate(7)), &rate(2), 60_000).await.unwrap(),
        Swap::Lost(Some(rate(1))),
        "not the stored state"
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(rate(1)), "a lost compare-and-set writes nothing");
    assert_eq!(store.compare_and_set(&k, Some(&rate(1)), &rate(2), 60_000).await.unwrap(), Swap::Stored);
    assert_eq!(store.get(&k).await.unwrap(), Some(rate(2)));
    assert_eq!(store.get(&key("b")).await.unwrap(), None, "keys are per subject");
    assert_eq!(
        store.compare_and_set(&key("b"), Some(&rate(2)), &rate(3), 60_000).await.unwrap(),
        Swap::Lost(None),
        "expecting a state where there is none answers that there is none"
    );
    assert_eq!(store.get(&key("b")).await.unwrap(), None);

    let short = key("short-lived");
    assert_eq!(store.compare_and_set(&short, None, &rate(1), 50).await.unwrap(), Swap::Stored);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.get(&short).await.unwrap(), None, "state expires once the limiter has fully reset");
}

/// Compare-and-sets sent at once go to Redis together; each is answered as if alone, in the
/// order sent: of 64 first writes of one key exactly one stores and the rest are told what it
/// wrote, while 64 other keys each store their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_sets_sent_together_are_each_answered_as_if_alone() {
    let Some(store) = redis().await else { return };
    let store = Arc::new(store);
    let shared = key("first-write");
    let tasks: Vec<_> = (0..128u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = if i % 2 == 0 { shared.clone() } else { key(&format!("own-{i}")) };
            tokio::spawn(async move { (i, store.compare_and_set(&k, None, &rate(i), 60_000).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Swap::Stored) if i % 2 == 0 => winners.push(i),
            (i, Swap::Stored) => assert_eq!(store.get(&key(&format!("own-{i}"))).await.unwrap(), Some(rate(i))),
            (i, Swap::Lost(stored)) => {
                assert_eq!(i % 2, 0, "a key of its own was lost");
                told.push(stored);
            }
        }
    }
    assert_eq!(winners.len(), 1, "one first write of the shared key stores");
    let stored = store.get(&shared).await.unwrap();
    assert_eq!(stored, Some(rate(winners[0])));
    assert_eq!(told.len(), 63);
    assert!(told.iter().all(|t| *t == stored), "every other writer is told what the first wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_no_update() {
    let Some(store) = redis().await else { return };
    let store = Arc::new(store);
    let k = key("contended");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, k) = (Arc::clone(&store), k.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer starts from what a lost compare-and-set answered, reading only once.
            let mut conflicts = 0u32;
            let mut current = store.get(&k).await.unwrap();
            for _ in 0..25 {
                loop {
                    let next = rate(current.as_ref().map_or(0, |r| r.words[0]) + 1);
                    match store.compare_and_set(&k, current.as_ref(), &next, 60_000).await.unwrap() {
                        Swap::Stored => {
                            current = Some(next);
                            break;
                        }
                        Swap::Lost(stored) => current = stored,
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    assert_eq!(store.get(&k).await.unwrap(), Some(rate(800)), "32 x 25 increments, none lost");
    eprintln!("{conflicts} compare-and-set conflicts were retried");
}

#[tokio::test]
async fn the_breaker_opens_on_an_unreachable_backend_and_answers_at_once() {
    // A backend that never answers: each call hits the deadline, and after two the circuit
    // opens. (A real Redis killed under load is exercised by the server's tests.)
    let guarded = Guarded::new(
        Fake { silent: true },
        CircuitBreaker::new("silent", 2, Duration::from_secs(60)),
        Duration::from_millis(20),
    );
    for _ in 0..2 {
        assert!(matches!(guarded.get(&key("x")).await, Err(RateStateError::Backend(_))), "times out");
    }
    let started = std::time::Instant::now();
    assert!(matches!(guarded.get(&key("x")).await, Err(RateStateError::Open { .. })), "open after two");
    assert!(started.elapsed() < Duration::from_millis(20), "an open circuit does not wait for the backend");
    assert!(guarded.retry_in() > Duration::from_secs(50));
}

/// A backend that never answers (`silent`), or answers a `get` of the key "slow" after 60 ms,
/// any other call after 5 ms, and a `get` of the key "lost" never.
struct Fake {
    silent: bool,
}

impl Fake {
    async fn answer(&self, subject: &str) {
        match subject {
            _ if self.silent => std::future::pending::<()>().await,
            "lost" => std::future::pending::<()>().await,
            "slow" => tokio::time::sleep(Duration::from_millis(60)).await,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

impl SharedRateState for Fake {
    fn get<'a>(
        &'a self,
        key: &'a RateKey,
    ) -> leaky_store::rate_state::BoxFuture<'a, Result<Option<StoredRate>, RateStateError>> {
        Box::pin(async move {
            self.answer(&key.subject).await;
            Ok(None)
        })
    }
    fn compare_and_set<'a>(
        &'a self,
        key: &'a RateKey,
        _: Option<&'a StoredRate>,
        _: &'a StoredRate,
        _: u64,
    ) -> leaky_store::rate_state::BoxFuture<'a, Result<Swap, RateStateError>> {
        Box::pin(async move {
            self.answer(&key.subject).await;
            Ok(Swap::Stored)
        })
    }
}

#[tokio::test]
async fn a_call_queued_while_the_backend_answers_others_waits_on_and_a_lost_one_fails_in_time() {
    // Deadlines of 20 ms; other tasks keep getting answers every 5 ms.
    let guarded = Arc::new(Guarded::new(
        Fake { silent: false },
        CircuitBreaker::new("slow", 2, Duration::from_secs(60)),
        Duration::from_millis(20),
    ));
    let started = std::time::Instant::now();
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let guarded = Arc::clone(&guarded);
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(2) {
                    guarded.get(&key("busy")).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        assert_eq!(guarded.get(&key("slow")).await.unwrap(), None, "three deadlines, and answered");
    }
    assert_eq!(guarded.retry_in(), Duration::ZERO, "the breaker stays closed");
    // An answer that never comes: the call fails after a bounded wait, answers or not.
    assert!(matches!(guarded.get(&key("lost")).await, Err(RateStateError::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    for task in busy {
        task.await.unwrap();
    }
}
