//! The counters a consume moves, registered once. Looking a labelled counter up on every
//! request builds its key (an allocation per label) and searches the registry; a consume does
//! that two or three times, so the handles are kept instead.

use dashmap::DashMap;
use metrics::Counter;

/// `leaky_consume_total` by outcome, `leaky_tokens_consumed_total` by provider and
/// `leaky_quota_arbitrated_total`.
pub struct ConsumeCounters {
    allowed: Counter,
    rate_limited: Counter,
    quota_rejected: Counter,
    policy_denied: Counter,
    arbitrated: Counter,
    tokens: DashMap<String, Counter>,
}

/// What became of a consume.
#[derive(Clone, Copy, Debug)]
pub enum Counted {
    /// Spent.
    Allowed,
    /// Refused by the rate policy.
    RateLimited,
    /// Refused by a quota.
    QuotaRejected,
    /// Refused by a quota rule.
    PolicyDenied,
}

impl ConsumeCounters {
    /// Registers the counters with the installed recorder (install it first: a handle taken
    /// before counts nowhere).
    pub fn register() -> Self {
        let outcome = |label: &'static str| metrics::counter!("leaky_consume_total", "outcome" => label);
        Self {
            allowed: outcome("allowed"),
            rate_limited: outcome("rate_limited"),
            quota_rejected: outcome("quota_rejected"),
            policy_denied: outcome("policy_denied"),
            arbitrated: metrics::counter!("leaky_quota_arbitrated_total"),
            tokens: DashMap::new(),
        }
    }

    /// Counts a consume's outcome.
    pub fn outcome(&self, outcome: Counted) {
        match outcome {
            Counted::Allowed => &self.allowed,
            Counted::RateLimited => &self.rate_limited,
            Counted::QuotaRejected => &self.quota_rejected,
            Counted::PolicyDenied => &self.policy_denied,
        }
        .increment(1);
    }

    /// Counts a quota refusal that the database, not this process's book, made.
    pub fn arbitrated(&self) {
        self.arbitrated.increment(1);
    }

    /// Counts tokens spent on `provider`.
    pub fn tokens(&self, provider: &str, tokens: u64) {
        if let Some(counter) = self.tokens.get(provider) {
            counter.increment(tokens);
            return;
        }
        let counter = metrics::counter!("leaky_tokens_consumed_total", "provider" => provider.to_string());
        counter.increment(tokens);
        self.tokens.insert(provider.to_string(), counter);
    }
}
