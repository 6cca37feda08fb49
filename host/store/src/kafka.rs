//! Kafka: the event bus of a cluster, and the analytics consumer group.
//!
//! The outbox relay publishes each event to its versioned topic (`leaky.usage.v1`,
//! `leaky.purchases.v1`, behind an optional prefix), keyed by user so one user's events stay in
//! order, through an idempotent producer (`acks=all`), and counts a batch as published only
//! when every event of it is acknowledged. Each message carries its event id and a W3C
//! `traceparent` header whose trace id is the event id, so a consumer's spans join the event's
//! trace. The analytics consumer group feeds an [`AnalyticsSink`] and stores a message's offset
//! only after the sink recorded it: at least once, and the sink deduplicates by event id, so
//! replaying a topic changes nothing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use uuid::Uuid;

use crate::StoreError;
use crate::analytics::AnalyticsSink;
use crate::bus::{BoxFuture, EventBus, StoredEvent};
use crate::events::{Event, PURCHASE_TOPIC, USAGE_TOPIC};

/// Where the brokers are and how topics are named.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port` list.
    pub brokers: String,
    /// Prepended to every topic name (empty in production; tests isolate themselves with it).
    pub topic_prefix: String,
}

fn bus_error(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Bus(format!("{what}: {err}"))
}

impl KafkaConfig {
    /// The topic names, prefixed.
    pub fn topics(&self) -> [String; 2] {
        [format!("{}{USAGE_TOPIC}", self.topic_prefix), format!("{}{PURCHASE_TOPIC}", self.topic_prefix)]
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Creates the topics when they do not exist (3 partitions, one replica per broker set by
    /// the cluster's defaults elsewhere).
    pub async fn ensure_topics(&self) -> Result<(), StoreError> {
        let admin: AdminClient<DefaultClientContext> =
            self.client().create().map_err(|e| bus_error("cannot create the Kafka admin client", e))?;
        let topics = self.topics();
        let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(&new, &options).await.map_err(|e| bus_error("creating topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(bus_error(&format!("creating topic {topic}"), code)),
            }
        }
        Ok(())
    }
}

/// Publishes outbox batches to Kafka.
pub struct KafkaBus {
    producer: FutureProducer,
    config: KafkaConfig,
}

/// `00-<event id>-<its last 8 bytes>-01`: a trace whose id is the event's.
pub fn traceparent(event_id: Uuid) -> String {
    let id = event_id.simple().to_string();
    format!("00-{id}-{}-01", &id[16..])
}

impl KafkaBus {
    /// An idempotent producer on `config.brokers`; creates the topics if needed.
    pub async fn connect(config: KafkaConfig) -> Result<Self, StoreError> {
        config.ensure_topics().await?;
        let producer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "2")
            .create()
            .map_err(|e| bus_error("cannot create the Kafka producer", e))?;
        Ok(Self { producer, config })
    }

    /// Sends each event's JSON to its versioned topic, keyed by user, with its id and a
    /// traceparent in the headers, and waits until the broker has every one.
    async fn send(&self, events: &[StoredEvent]) -> Result<(), StoreError> {
        let prefix = &self.config.topic_prefix;
        let mut deliveries = Vec::with_capacity(events.len());
        let mut topic = String::new();
        for event in events {
            topic.clear();
            topic.push_str(prefix);
            topic.push_str(&event.topic);
            let event_id = event.id.to_string();
            let trace = traceparent(event.id);
            let headers = OwnedHeaders::new()
                .insert(Header { key: "event-id", value: Some(event_id.as_bytes()) })
                .insert(Header { key: "traceparent", value: Some(trace.as_bytes()) });
            let record = FutureRecord::to(&topic).key(&event.key).payload(&event.payload).headers(headers);
            let delivery = self.producer.send_result(record).map_err(|(e, _)| bus_error("queueing an event", e))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(bus_error("publishing an event", err)),
                Err(_) => return Err(StoreError::Bus("the producer dropped an event".into())),
            }
        }
        Ok(())
    }
}

impl EventBus for KafkaBus {
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let stored = events.iter().map(StoredEvent::of).collect::<Result<Vec<_>, _>>()?;
            self.send(&stored).await
        })
    }

    /// Sends the JSON as the outbox stored it.
    fn publish_stored<'a>(&'a self, events: &'a [StoredEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.send(events))
    }
}

/// Most messages the analytics consumer records in one write to the sink: what the SQL sink
/// writes in one statement.
const CONSUMED_PER_WRITE: usize = crate::analytics::EVENTS_PER_STATEMENT;
/// How long the analytics consumer gathers messages, from the first, into one write to the sink.
///
/// A write of the few hundred events that arrive together costs a statement (and, on
/// PostgreSQL, a turn of the record lock all replicas' consumers share) for those few; a whole
/// statement's worth costs the same once. Analytics lag by up to this long at a trickle of
/// events.
const GATHER_FOR: Duration = Duration::from_millis(500);

/// Runs the analytics consumer group `group` until the task is dropped: the events that arrive
/// within [`GATHER_FOR`] of the first (up to [`CONSUMED_PER_WRITE`]) are recorded by `sink`
/// together, then their offsets are stored.
pub fn spawn_analytics_consumer(
    config: &KafkaConfig,
    group: &str,
    sink: Arc<dyn AnalyticsSink>,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let consumer: StreamConsumer = config
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .create()
        .map_err(|e| bus_error("cannot create the Kafka consumer", e))?;
    let topics = config.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| bus_error("subscribing", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let first = match consumer.recv().await {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "analytics consumer: receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Whatever else arrives soon goes into the same write to the sink, each event read
            // as it arrives (so a full write is never parsed in one go).
            let until = tokio::time::Instant::now() + GATHER_FOR;
            let mut events = Vec::with_capacity(CONSUMED_PER_WRITE);
            read_event(&first, &mut events);
            let mut messages = vec![first];
            while messages.len() < CONSUMED_PER_WRITE {
                match tokio::time::timeout_at(until, consumer.recv()).await {
                    Ok(Ok(message)) => {
                        read_event(&message, &mut events);
                        messages.push(message);
                    }
                    _ => break,
                }
            }
            // Recorded before their offsets are stored: a crash in between replays them, and the
            // sink's deduplication makes the replay change nothing.
            loop {
                let started = std::time::Instant::now();
                match sink.record(&events).await {
                    Ok(()) => {
                        metrics::histogram!("leaky_analytics_record_seconds").record(started.elapsed().as_secs_f64());
                        break;
                    }
                    Err(err) => {
                        metrics::counter!("leaky_analytics_record_failed_total").increment(1);
                        tracing::warn!(error = %err, "analytics consumer: recording failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            metrics::counter!("leaky_analytics_consumed_total").increment(events.len() as u64);
            for message in &messages {
                if let Err(err) = consumer.store_offset_from_message(message) {
                    tracing::warn!(error = %err, "analytics consumer: cannot store the offset");
                }
            }
        }
    }))
}

/// Adds the event `message` carries to `events`; a message that is none is logged, counted
/// (`leaky_analytics_skipped_total`) and passed over.
fn read_event(message: &BorrowedMessage<'_>, events: &mut Vec<Event>) {
    match message.payload().map(serde_json::from_slice::<Event>) {
        Some(Ok(event)) => events.push(event),
        _ => {
            let event_id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event-id"))
                .and_then(|h| h.value)
                .map(String::from_utf8_lossy);
            tracing::error!(
                topic = message.topic(),
                offset = message.offset(),
                ?event_id,
                "analytics consumer: skipping a message that is not an event"
            );
            metrics::counter!("leaky_analytics_skipped_total").increment(1);
        }
    }
}
