//! The event bus: where the outbox relay publishes. In-process by default; Kafka in a cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::StoreError;
use crate::analytics::AnalyticsSink;
use crate::events::Event;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event as the outbox holds it: the JSON it was committed as, and the columns a bus routes
/// it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event's id.
    pub id: Uuid,
    /// Its topic ([`Event::topic`]).
    pub topic: String,
    /// Its key: the user's id.
    pub key: String,
    /// The event as JSON.
    pub payload: String,
}

impl StoredEvent {
    /// `event` as the outbox stores it.
    pub fn of(event: &Event) -> Result<Self, StoreError> {
        Ok(Self {
            id: event.id,
            topic: event.topic().to_string(),
            key: event.user_id.to_string(),
            payload: serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    /// The event its payload holds.
    pub fn event(&self) -> Result<Event, StoreError> {
        serde_json::from_str(&self.payload).map_err(|e| StoreError::Corrupt(format!("outbox event {}: {e}", self.id)))
    }
}

/// Carries events from the outbox to their consumers, at least once.
pub trait EventBus: Send + Sync {
    /// Publishes a batch, in order. An error means "retry the batch".
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Publishes a batch read back from the outbox, in order, as [`EventBus::publish`] would
    /// the events it holds. A bus that carries the JSON itself sends it as stored, rather than
    /// reading each event and writing it again.
    fn publish_stored<'a>(&'a self, events: &'a [StoredEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let events = events.iter().map(StoredEvent::event).collect::<Result<Vec<_>, _>>()?;
            self.publish(&events).await
        })
    }
}

/// Delivers events straight to the sinks of this process.
pub struct InProcessBus {
    sinks: Vec<Arc<dyn AnalyticsSink>>,
}

impl InProcessBus {
    /// A bus feeding these sinks.
    pub fn new(sinks: Vec<Arc<dyn AnalyticsSink>>) -> Self {
        Self { sinks }
    }
}

impl EventBus for InProcessBus {
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for sink in &self.sinks {
                sink.record(events).await?;
            }
            Ok(())
        })
    }
}
