//! The Kafka bus and the analytics consumer group against a real Kafka-protocol broker:
//! delivery with event-id and traceparent headers, deduplication of a replayed topic, and the
//! outbox relay cut off again and again mid-publish during 1,000 purchases without losing or
//! double-counting an event (from a SQLite ledger and from a PostgreSQL one), and writes to the
//! analytics store that fail, counted and tried again until they succeed.
//!
//! The broker is `LEAKY_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; `cargo xtask test` starts
//! one when nothing answers). Without a broker the tests fail, unless `LEAKY_TEST_KAFKA=absent`
//! declares it absent; then they say they skipped. Each test uses topics and a consumer group of
//! its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Counters, TestDb};
use leaky_store::analytics::{AnalyticsSink, Report, ReportQuery, SqlAnalytics};
use leaky_store::bus::BoxFuture;
use leaky_store::bus::EventBus;
use leaky_store::events::{Event, Outcome};
use leaky_store::kafka::{KafkaBus, KafkaConfig, spawn_analytics_consumer, traceparent};
use leaky_store::{Database, StoreError, outbox, purchases};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

fn config() -> Option<KafkaConfig> {
    if std::env::var("LEAKY_TEST_KAFKA").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_KAFKA=absent declares the Kafka broker absent");
        return None;
    }
    let brokers = std::env::var("LEAKY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap().to_string();
    std::net::TcpStream::connect(&first).unwrap_or_else(|e| {
        panic!("no Kafka broker at {first}: {e} (start one, or set LEAKY_TEST_KAFKA=absent to skip)")
    });
    Some(KafkaConfig { brokers, topic_prefix: format!("t{}.", Uuid::new_v4().simple()) })
}

fn event(user: Uuid, n: u64) -> Event {
    Event {
        id: Uuid::now_v7(),
        outcome: if n.is_multiple_of(10) { Outcome::Purchased } else { Outcome::Allowed },
        user_id: user,
        org_id: None,
        provider: "openai".into(),
        model: None,
        tokens: n,
        occurred_at: leaky_store::now_ms(),
    }
}

async fn analytics() -> (tempfile::TempDir, Database, Arc<dyn AnalyticsSink>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&format!("sqlite://{}", dir.path().join("a.db").display())).await.unwrap();
    let sink: Arc<dyn AnalyticsSink> = Arc::new(SqlAnalytics::new(&db));
    (dir, db, sink)
}

async fn recorded(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events").fetch_one(db.pool()).await.unwrap()
}

async fn wait_for_count(db: &Database, wanted: i64) {
    let started = Instant::now();
    while recorded(db).await < wanted {
        assert!(started.elapsed() < Duration::from_secs(60), "analytics has {} of {wanted}", recorded(db).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("analytics had all {wanted} events after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_analytics_once_with_their_headers_even_when_the_topic_is_replayed() {
    let Some(config) = config() else { return };
    let (_dir, db, sink) = analytics().await;
    let bus = KafkaBus::connect(config.clone()).await.unwrap();
    let users = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let events: Vec<Event> = (1..=100).map(|n| event(users[n as usize % 3], n)).collect();
    bus.publish(&events).await.unwrap();
    let consumer = spawn_analytics_consumer(&config, &format!("g{}", Uuid::new_v4().simple()), sink).unwrap();
    wait_for_count(&db, 100).await;

    // Replaying the topic (everything published again) changes nothing.
    bus.publish(&events).await.unwrap();
    let sentinel = event(users[0], 1000);
    bus.publish(std::slice::from_ref(&sentinel)).await.unwrap();
    wait_for_count(&db, 101).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorded(&db).await, 101, "each event is counted once");
    let tokens: i64 = sqlx::query_scalar("SELECT CAST(SUM(tokens) AS BIGINT) FROM analytics_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(tokens, (1..=100).sum::<i64>() + 1000);
    consumer.abort();

    // Messages are keyed by user and carry the event id and a traceparent.
    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("r{}", Uuid::new_v4().simple()))
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..3 {
        partitions.add_partition_offset(&config.topics()[1], partition, rdkafka::Offset::Beginning).unwrap();
    }
    reader.assign(&partitions).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(20), reader.recv()).await.unwrap().unwrap();
    let payload: Event = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(payload.outcome, Outcome::Purchased, "purchases have a topic of their own");
    assert_eq!(message.key().unwrap(), payload.user_id.to_string().as_bytes());
    let headers = message.headers().unwrap();
    let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(<[u8]>::to_vec);
    assert_eq!(header("event-id").unwrap(), payload.id.to_string().into_bytes());
    assert_eq!(header("traceparent").unwrap(), traceparent(payload.id).into_bytes());
}

on_both_databases!(the_relay_cut_off_again_and_again_during_1000_purchases_delivers_each_event_once);

/// 1,000 purchases run their sagas (each credit writes its event to the outbox) while the relay
/// is cut off mid-publish again and again; on the ledger database of `t` (SQLite, then
/// PostgreSQL).
async fn the_relay_cut_off_again_and_again_during_1000_purchases_delivers_each_event_once(t: &TestDb) {
    let Some(config) = config() else { return };
    let db = &t.db;
    let buyers: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool().clone();
            tokio::spawn(async move {
                let user = Uuid::now_v7();
                for _ in 0..250 {
                    let id = Uuid::now_v7();
                    purchases::create(&pool, id, user, "openai", 10).await.unwrap();
                    purchases::capture_payment(&pool, id, 10).await.unwrap();
                    let purchase = purchases::get(&pool, id).await.unwrap().unwrap();
                    purchases::credit_quota(&pool, &purchase, None, 1000).await.unwrap();
                    purchases::finish_saga(&pool, id, "COMPLETED", "tokens credited").await.unwrap();
                }
            })
        })
        .collect();
    let bus = KafkaBus::connect(config.clone()).await.unwrap();
    // While purchases run, the relay is cut off after 1 to 20 ms, mid-publish; once they are
    // done, after ever longer, until it gets through.
    let (mut cancelled, mut round) = (0, 0u64);
    loop {
        let buying = buyers.iter().any(|b| !b.is_finished());
        if !buying && outbox::pending(db.pool()).await.unwrap() == 0 {
            break;
        }
        round += 1;
        let deadline = if buying { 1 + round % 20 } else { round };
        match tokio::time::timeout(Duration::from_millis(deadline), outbox::relay_once(db, &bus)).await {
            Err(_) => cancelled += 1,
            Ok(result) => {
                result.unwrap();
            }
        }
    }
    for buyer in buyers {
        buyer.await.unwrap();
    }
    eprintln!("the relay was cut off {cancelled} times");
    assert!(cancelled > 10, "the relay must have been cut off again and again");

    let (_adir, analytics_db, sink) = analytics().await;
    let consumer = spawn_analytics_consumer(&config, &format!("g{}", Uuid::new_v4().simple()), sink).unwrap();
    wait_for_count(&analytics_db, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorded(&analytics_db).await, 1000, "every committed purchase event, each once");
    consumer.abort();
}

/// A sink whose first `failures` writes fail (an analytics store that is down), then writes
/// through to `inner`.
struct FailingAtFirst {
    inner: Arc<dyn AnalyticsSink>,
    failures: AtomicUsize,
}

impl AnalyticsSink for FailingAtFirst {
    fn record<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        if self.failures.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok() {
            return Box::pin(async { Err(StoreError::Analytics("the analytics store is down".into())) });
        }
        self.inner.record(events)
    }

    fn report<'a>(&'a self, query: &'a ReportQuery) -> BoxFuture<'a, Result<Report, StoreError>> {
        self.inner.report(query)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_analytics_store_refuses_are_counted_and_tried_again_until_every_event_is_in() {
    let counters = Counters::default();
    metrics::set_global_recorder(counters.clone()).unwrap();
    let Some(config) = config() else { return };
    let (_dir, db, sink) = analytics().await;
    let sink = Arc::new(FailingAtFirst { inner: sink, failures: AtomicUsize::new(3) });
    let bus = KafkaBus::connect(config.clone()).await.unwrap();
    let user = Uuid::now_v7();
    let events: Vec<Event> = (1..=20).map(|n| event(user, n)).collect();
    bus.publish(&events).await.unwrap();

    let consumer = spawn_analytics_consumer(&config, &format!("g{}", Uuid::new_v4().simple()), sink.clone()).unwrap();
    wait_for_count(&db, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorded(&db).await, 20, "every event, each once");
    assert_eq!(sink.failures.load(Ordering::Relaxed), 0, "the failing writes were made");
    // Only this test's sink fails (under `cargo test` the other tests count in this process too).
    assert_eq!(counters.get("leaky_analytics_record_failed_total"), 3);
    consumer.abort();
}
