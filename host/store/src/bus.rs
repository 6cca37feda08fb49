//! The event bus: where the outbox relay publishes. In-process by default; Kafka in a cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::StoreError;
use crate::analytics::AnalyticsSink;
use crate::events::Event;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries events from the outbox to their consumers, at least once.
pub trait EventBus: Send + Sync {
    /// Publishes a batch, in order. An error means "retry the batch".
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>>;
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
