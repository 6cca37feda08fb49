//! The decision: may this user spend N tokens on this provider now?
//!
//! All-or-nothing across the provider's rate policy, the user's quota and the user's org quota:
//! every check passes and every state changes together, under the account locks, or nothing
//! changes at all. The debit is then committed (ledger row, quota counters and usage event in
//! one transaction, grouped with other requests') before the caller is answered.

use std::sync::Arc;

use leaky_engine::{Charge, Outcome as RateOutcome, Request, Usage, Verdict};
use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::{Debit, LedgerWriter};
use uuid::Uuid;

use crate::error::ApiError;
use crate::services::accounts::{Account, Accounts, RateState, lock};
use crate::services::policies::{BoundPolicy, BoundQuotaRule, PolicyRegistry};

/// A consume request, validated.
#[derive(Clone, Debug)]
pub struct ConsumeRequest {
    /// Whose tokens.
    pub user_id: Uuid,
    /// Which provider.
    pub provider: String,
    /// How many.
    pub tokens: u64,
    /// The model, when named.
    pub model: Option<String>,
    /// The caller's id for this request (kept in the ledger).
    pub request_id: Option<String>,
}

/// Quota standing after a decision.
#[derive(Clone, Debug)]
pub struct QuotaView {
    /// Limit of the period.
    pub limit: i64,
    /// Spent in the period.
    pub used: i64,
    /// End of the period, if it ends.
    pub reset_at: Option<i64>,
}

/// The outcome of a consume.
pub enum ConsumeOutcome {
    /// Spent.
    Allowed {
        /// The user's quota after the debit.
        user: QuotaView,
        /// The org's, if the user is in an org with a quota.
        org: Option<(Uuid, QuotaView)>,
        /// The rate verdict.
        rate: Verdict,
    },
    /// Refused by the rate policy.
    RateLimited {
        /// The rate verdict (with the exact wait).
        rate: Verdict,
    },
    /// Refused by a quota.
    QuotaExhausted {
        /// `user` or `org`.
        scope: &'static str,
        /// The exhausted quota.
        quota: QuotaView,
        /// The rate verdict the request would have had.
        rate: Verdict,
    },
}

/// Runs decisions.
pub struct ConsumeService {
    accounts: Arc<Accounts>,
    policies: Arc<PolicyRegistry>,
    ledger: LedgerWriter,
}

fn view(q: &leaky_store::quotas::Quota) -> QuotaView {
    QuotaView { limit: q.limit, used: q.used, reset_at: q.reset_at() }
}

impl ConsumeService {
    /// A service over the book, the policies and the ledger.
    pub fn new(accounts: Arc<Accounts>, policies: Arc<PolicyRegistry>, ledger: LedgerWriter) -> Self {
        Self { accounts, policies, ledger }
    }

    /// The rate policy of a provider, as of now.
    pub fn policy(&self, provider: &str) -> Arc<BoundPolicy> {
        Arc::clone(&self.policies.snapshot().rate_for(provider).policy)
    }

    /// Decides, applies and commits one request. The policy set in force when it starts
    /// decides it, even if another set is swapped in meanwhile.
    pub async fn consume(&self, req: ConsumeRequest) -> Result<(ConsumeOutcome, Arc<BoundPolicy>), ApiError> {
        let set = self.policies.snapshot();
        let facts = self.accounts.user(req.user_id).await?.ok_or(ApiError::NotFound("user"))?;
        let binding = Arc::clone(set.rate_for(&req.provider));
        let policy = Arc::clone(&binding.policy);
        let account = self.accounts.account(req.user_id, &req.provider).await?;
        let org = match facts.org_id {
            Some(org_id) => self.accounts.org(org_id, &req.provider).await?.map(|cell| (org_id, cell)),
            None => None,
        };
        let now = leaky_store::now_ms();
        let now_ms = u64::try_from(now).unwrap_or(0);
        let event = |outcome| Event {
            id: Uuid::now_v7(),
            outcome,
            user_id: req.user_id,
            org_id: facts.org_id,
            provider: req.provider.clone(),
            model: req.model.clone(),
            tokens: req.tokens,
            occurred_at: now,
        };

        let cost = match set.quota_for(&req.provider) {
            Some(rule) => match price(rule, &req, now_ms)? {
                Ok(cost) => cost,
                Err(reason) => {
                    metrics::counter!("leaky_consume_total", "outcome" => "policy_denied").increment(1);
                    self.ledger.record(event(Outcome::QuotaRejected));
                    return Err(ApiError::PolicyDenied(reason));
                }
            },
            None => i64::try_from(req.tokens).map_err(|_| ApiError::InvalidRequest("tokens is too large".into()))?,
        };

        // Decide and apply under the locks: user account first, then org.
        let mut previous_rate = None;
        let (outcome, debit) = {
            let mut acct = lock(&account);
            let mut org_quota = org.as_ref().map(|(_, cell)| lock(cell));
            acct.quota.roll(now);
            if let Some(q) = org_quota.as_deref_mut() {
                q.roll(now);
            }
            let request = Request { tokens: req.tokens, now_ms };
            let decision = policy
                .limiter
                .decide(&policy.config, acct.rate_for(&policy.strategy), request)
                .map_err(anyhow::Error::from)?;
            if let Some(shadow) = &binding.shadow {
                run_shadow(shadow, &mut acct, request, &req.provider);
            }
            if decision.verdict.outcome != RateOutcome::Allowed {
                (ConsumeOutcome::RateLimited { rate: decision.verdict }, None)
            } else if acct.quota.used + cost > acct.quota.limit {
                (
                    ConsumeOutcome::QuotaExhausted { scope: "user", quota: view(&acct.quota), rate: decision.verdict },
                    None,
                )
            } else if let Some(q) = org_quota.as_deref().filter(|q| q.used + cost > q.limit) {
                (ConsumeOutcome::QuotaExhausted { scope: "org", quota: view(q), rate: decision.verdict }, None)
            } else {
                let applied = RateState { strategy: Arc::clone(&policy.strategy), words: decision.state };
                previous_rate = Some((acct.rate.clone(), applied.clone()));
                acct.rate = Some(applied);
                acct.quota.used += cost;
                if let Some(q) = org_quota.as_deref_mut() {
                    q.used += cost;
                }
                let debit = Debit {
                    entry_id: Uuid::now_v7(),
                    user_id: req.user_id,
                    org: org.as_ref().zip(org_quota.as_deref()).map(|((id, _), q)| (*id, q.period_start)),
                    provider: req.provider.clone(),
                    tokens: req.tokens,
                    user_period_start: acct.quota.period_start,
                    user_limit: acct.quota.limit,
                    request_id: req.request_id.clone(),
                    event: event(Outcome::Allowed),
                };
                let org_view = org.as_ref().zip(org_quota.as_deref()).map(|((id, _), q)| (*id, view(q)));
                (
                    ConsumeOutcome::Allowed { user: view(&acct.quota), org: org_view, rate: decision.verdict },
                    Some(debit),
                )
            }
        };

        match debit {
            Some(debit) => {
                let period = debit.user_period_start;
                let org_period = debit.org.map(|(_, start)| start);
                if let Err(err) = self.ledger.debit(debit).await {
                    // Undo the reservation: the request is refused, so it spends nothing. The rate
                    // state is put back unless another request has moved it on since (then the
                    // limiter stays the stricter of the two, never the looser).
                    let mut acct = lock(&account);
                    if acct.quota.period_start == period {
                        acct.quota.used -= cost;
                    }
                    if let Some((before, applied)) = previous_rate
                        && acct.rate.as_ref() == Some(&applied)
                    {
                        acct.rate = before;
                    }
                    if let (Some((_, cell)), Some(start)) = (&org, org_period) {
                        let mut q = lock(cell);
                        if q.period_start == start {
                            q.used -= cost;
                        }
                    }
                    return Err(err.into());
                }
                metrics::counter!("leaky_consume_total", "outcome" => "allowed").increment(1);
                metrics::counter!("leaky_tokens_consumed_total", "provider" => req.provider.clone())
                    .increment(req.tokens);
            }
            None => {
                let (label, outcome) = match &outcome {
                    ConsumeOutcome::RateLimited { .. } => ("rate_limited", Outcome::RateLimited),
                    _ => ("quota_rejected", Outcome::QuotaRejected),
                };
                metrics::counter!("leaky_consume_total", "outcome" => label).increment(1);
                self.ledger.record(event(outcome));
            }
        }
        Ok((outcome, policy))
    }
}

/// What the provider's quota rule charges for the request: `Ok(cost)`, or `Err(reason)` when
/// the rule refuses it.
fn price(rule: &BoundQuotaRule, req: &ConsumeRequest, now_ms: u64) -> Result<Result<i64, String>, ApiError> {
    let usage = Usage {
        subject: req.user_id.to_string(),
        provider: req.provider.clone(),
        model: req.model.clone(),
        tokens: req.tokens,
        now_ms,
    };
    match rule.rule.price(&rule.config, &usage).map_err(anyhow::Error::from)? {
        Charge::Cost(cost) => Ok(Ok(i64::try_from(cost).unwrap_or(i64::MAX))),
        Charge::Deny(reason) => Ok(Err(reason)),
    }
}

/// Runs the shadow limiter as if it were enforced (its own state moves only when it would
/// admit) and counts its verdict. It never changes the answer; a failing shadow is counted
/// and otherwise ignored.
fn run_shadow(shadow: &BoundPolicy, acct: &mut Account, request: Request, provider: &str) {
    let verdict = match shadow.limiter.decide(&shadow.config, acct.shadow_for(&shadow.strategy), request) {
        Ok(decision) if decision.verdict.outcome == RateOutcome::Allowed => {
            acct.shadow = Some(RateState { strategy: Arc::clone(&shadow.strategy), words: decision.state });
            "would_allow"
        }
        Ok(_) => "would_refuse",
        Err(err) => {
            tracing::debug!(module = %shadow.module, error = %err, "shadow policy failed");
            "error"
        }
    };
    metrics::counter!("leaky_policy_shadow_verdicts_total", "provider" => provider.to_string(),
        "module" => shadow.module.clone(), "verdict" => verdict)
    .increment(1);
}
