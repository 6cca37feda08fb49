//! Domain events: what the outbox carries and the analytics sink records.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic of usage decisions.
pub const USAGE_TOPIC: &str = "leaky.usage.v1";
/// The topic of completed purchases.
pub const PURCHASE_TOPIC: &str = "leaky.purchases.v1";

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Tokens were spent.
    Allowed,
    /// Refused by the rate limit.
    RateLimited,
    /// Refused by a quota.
    QuotaRejected,
    /// Tokens were bought.
    Purchased,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::RateLimited => "rate_limited",
            Self::QuotaRejected => "quota_rejected",
            Self::Purchased => "purchased",
        }
    }
}

/// One event. Consumers deduplicate by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique id; the deduplication key.
    pub id: Uuid,
    /// What happened.
    pub outcome: Outcome,
    /// Whose request.
    pub user_id: Uuid,
    /// The user's org, if any.
    pub org_id: Option<Uuid>,
    /// The provider.
    pub provider: String,
    /// The model, when named.
    pub model: Option<String>,
    /// Tokens spent, asked for, or bought.
    pub tokens: u64,
    /// When, ms since the epoch.
    pub occurred_at: i64,
}

impl Event {
    /// The topic this event is published on.
    pub fn topic(&self) -> &'static str {
        match self.outcome {
            Outcome::Purchased => PURCHASE_TOPIC,
            _ => USAGE_TOPIC,
        }
    }
}
