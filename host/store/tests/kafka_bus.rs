//! The Kafka bus and the analytics consumer group against a real Kafka-protocol broker:
//! delivery with event-id and traceparent headers, deduplication of a replayed topic, and the
//! outbox relay cancelled again and again mid-publish without losing or double-counting an event
//! (from a SQLite ledger and from a PostgreSQL one).
//!
//! The broker is `LEAKY_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; `cargo xtask test` starts
//! one when nothing answers). Without a broker the tests fail, unless `LEAKY_TEST_KAFKA=absent`
//! declares it absent; then they say they skipped. Each test uses topics and a consumer group of
//! its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use leaky_store::analytics::{AnalyticsSink, SqlAnalytics};
use leaky_store::bus::EventBus;
use leaky_store::events::{Event, Outcome};
use leaky_store::kafka::{KafkaBus, KafkaConfig, spawn_analytics_consumer, traceparent};
use leaky_store::{Database, outbox};
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
    assert_eq!(header("traceparent").unwrap(), traceparent(&payload).into_bytes());
}

on_both_databases!(a_relay_cancelled_again_and_again_delivers_every_committed_event_exactly_once_to_analytics);

/// On the ledger database of `t` (SQLite, then PostgreSQL).
async fn a_relay_cancelled_again_and_again_delivers_every_committed_event_exactly_once_to_analytics(t: &TestDb) {
    let Some(config) = config() else { return };
    let db = &t.db;
    let user = Uuid::now_v7();
    for n in 0..1000u64 {
        let e = event(user, n + 1);
        sqlx::query("INSERT INTO outbox (event_id, topic, key, payload, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(e.id.to_string())
            .bind(e.topic())
            .bind(e.user_id.to_string())
            .bind(serde_json::to_string(&e).unwrap())
            .bind(e.occurred_at)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let bus = KafkaBus::connect(config.clone()).await.unwrap();
    // The relay is cut off after 1, 2, 3 ... ms, mid-publish, until it gets through.
    let mut cancelled = 0;
    let mut deadline_ms = 1;
    while outbox::pending(db.pool()).await.unwrap() > 0 {
        match tokio::time::timeout(Duration::from_millis(deadline_ms), outbox::relay_once(db, &bus)).await {
            Err(_) => cancelled += 1,
            Ok(result) => {
                result.unwrap();
            }
        }
        deadline_ms += 1;
    }
    eprintln!("the relay was cancelled {cancelled} times");
    assert!(cancelled > 0, "the relay must have been cut off at least once");

    let (_adir, analytics_db, sink) = analytics().await;
    let consumer = spawn_analytics_consumer(&config, &format!("g{}", Uuid::new_v4().simple()), sink).unwrap();
    wait_for_count(&analytics_db, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorded(&analytics_db).await, 1000, "every committed event, each once");
    consumer.abort();
}
