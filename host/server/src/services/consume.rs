//! The decision: may this user spend N tokens on this provider now?
//!
//! All-or-nothing across the provider's rate policy, the user's quota and the user's org quota:
//! every check passes and every state changes together, under the account locks, or nothing
//! changes at all. The debit is then committed (ledger row, quota counters and usage event in
//! one transaction, grouped with other requests') before the caller is answered.
//!
//! With one replica the account book holds the rate state too ([`crate::services::reserve`]).
//! With replicas it lives in a shared store that arbitrates by compare-and-set
//! ([`crate::services::shared_rate`]).

use std::sync::Arc;

use leaky_engine::{Charge, Usage, Verdict, Words};
use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::{Committed, LedgerWriter, Scope};
use uuid::Uuid;

use crate::error::ApiError;
use crate::services::accounts::{AccountCell, Accounts, RateState, lock, state_for};
use crate::services::counters::{ConsumeCounters, Counted};
use crate::services::policies::{BoundPolicy, BoundQuotaRule, PolicyRegistry, PolicySet, RateBinding};
use crate::services::reserve::{Attempt, Periods, RateSource, Reserved};
use crate::services::shared_rate::SharedRate;

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
    shared: Option<SharedRate>,
    counters: ConsumeCounters,
}

impl ConsumeService {
    /// A service over the book, the policies and the ledger; `shared` is the rate state shared
    /// by replicas (`None`: this process's book decides alone).
    pub fn new(
        accounts: Arc<Accounts>,
        policies: Arc<PolicyRegistry>,
        ledger: LedgerWriter,
        shared: Option<SharedRate>,
    ) -> Self {
        Self { accounts, policies, ledger, shared, counters: ConsumeCounters::register() }
    }

    /// The ledger writer debits go to.
    pub fn ledger(&self) -> &LedgerWriter {
        &self.ledger
    }

    /// The rate policy of a provider, as of now.
    pub fn policy(&self, provider: &str) -> Arc<BoundPolicy> {
        Arc::clone(&self.policies.snapshot().rate_for(provider).policy)
    }

    /// The rate state a decision for `user` on `provider` would start from, for `strategy`.
    pub async fn rate_state(&self, account: &AccountCell, user: Uuid, provider: &str, strategy: &str) -> Option<Words> {
        match &self.shared {
            None => lock(account).rate_for(strategy),
            Some(shared) => state_for(shared.read(user, provider).await.ok().flatten().as_ref(), strategy),
        }
    }

    /// Whether the shared rate state answers (`None` when rate state is this process's own).
    pub async fn shared_state_answers(&self) -> Option<bool> {
        match &self.shared {
            None => None,
            Some(shared) => Some(shared.read(Uuid::nil(), "health-check").await.is_ok()),
        }
    }

    /// Decides, applies and commits one request. The policy set in force when it starts
    /// decides it, even if another set is swapped in meanwhile.
    pub async fn consume(&self, req: ConsumeRequest) -> Result<(ConsumeOutcome, Arc<BoundPolicy>), ApiError> {
        let set = self.policies.snapshot();
        let facts = self.accounts.user(req.user_id).await?.ok_or(ApiError::NotFound("user"))?;
        let binding = Arc::clone(set.rate_for(&req.provider));
        let account = self.accounts.account(req.user_id, &req.provider).await?;
        let org = match facts.org_id {
            Some(org_id) => self.accounts.org(org_id, &req.provider).await?.map(|cell| (org_id, cell)),
            None => None,
        };
        let now = leaky_store::now_ms();
        let now_ms = u64::try_from(now).unwrap_or(0);
        let cost = match set.quota_for(&req.provider) {
            Some(rule) => match price(rule, &req, now_ms)? {
                Ok(cost) => cost,
                Err(reason) => {
                    self.counters.outcome(Counted::PolicyDenied);
                    self.ledger.record(event(&req, facts.org_id, now, Outcome::QuotaRejected));
                    return Err(ApiError::PolicyDenied(reason));
                }
            },
            None => i64::try_from(req.tokens).map_err(|_| ApiError::InvalidRequest("tokens is too large".into()))?,
        };
        let attempt = Attempt { req: &req, org_id: facts.org_id, account: &account, org: org.as_ref(), cost, now };

        let (mut reserved, mut policy) = self.decide(&attempt, &binding).await?;
        if self.accounts.is_shared() && matches!(reserved.outcome, ConsumeOutcome::QuotaExhausted { .. }) {
            // Another replica may have raised the limit (a purchase) or a new period begun:
            // decide once more on the stored standing before refusing.
            self.accounts.refresh(&account, req.user_id, &req.provider, org.as_ref()).await?;
            (reserved, policy) = self.decide(&attempt, &binding).await?;
        }
        let policy = Arc::clone(policy);

        let mut outcome = reserved.outcome;
        match reserved.debit {
            Some(debit) => {
                let periods = Periods::of(&debit);
                match self.ledger.debit(debit).await {
                    Ok(committed @ (Committed::Spent { .. } | Committed::Recorded)) => {
                        // Only other processes can have moved a shared database's counters; on an
                        // embedded one the book is the authority, and the commit only tallies.
                        if let Committed::Spent { user, org } = committed {
                            attempt.adopt(Some(user), org);
                        }
                        self.counters.outcome(Counted::Allowed);
                        self.counters.tokens(&req.provider, req.tokens);
                    }
                    Ok(Committed::Refused { scope, standing }) => {
                        // Another replica spent what this one's book still counted as free.
                        self.undo(&attempt, reserved.rate.as_ref(), reserved.local, periods).await;
                        match scope {
                            Scope::User => attempt.adopt(Some(standing), None),
                            Scope::Org => attempt.adopt(None, Some(standing)),
                        }
                        if let (Scope::Org, None, Some(org_id)) = (scope, &org, facts.org_id) {
                            // An org quota set on another replica: load it for the next request.
                            self.accounts.forget_org(org_id, &req.provider);
                        }
                        let rate = match outcome {
                            ConsumeOutcome::Allowed { rate, .. } => rate,
                            ConsumeOutcome::RateLimited { rate } | ConsumeOutcome::QuotaExhausted { rate, .. } => rate,
                        };
                        let name = if scope == Scope::Org { "org" } else { "user" };
                        let quota =
                            QuotaView { limit: standing.limit, used: standing.used, reset_at: standing.reset_at };
                        outcome = ConsumeOutcome::QuotaExhausted { scope: name, quota, rate };
                        self.counters.outcome(Counted::QuotaRejected);
                        self.counters.arbitrated();
                        self.ledger.record(event(&req, facts.org_id, now, Outcome::QuotaRejected));
                    }
                    Err(err) => {
                        // Undo the reservation: the request is refused, so it spends nothing.
                        self.undo(&attempt, reserved.rate.as_ref(), reserved.local, periods).await;
                        return Err(err.into());
                    }
                }
            }
            None => {
                let (counted, refusal) = match &outcome {
                    ConsumeOutcome::RateLimited { .. } => (Counted::RateLimited, Outcome::RateLimited),
                    _ => (Counted::QuotaRejected, Outcome::QuotaRejected),
                };
                self.counters.outcome(counted);
                self.ledger.record(event(&req, facts.org_id, now, refusal));
            }
        }
        drop(account);
        if self.accounts.sweep_due() {
            self.sweep_accounts(&set, now_ms);
        }
        Ok((outcome, policy))
    }

    /// Drops the book's idle accounts (see [`Accounts::sweep`]) whose rate states are full again
    /// at `now_ms` under the policies of `set`, so that loading them afresh gives the same
    /// decisions.
    fn sweep_accounts(&self, set: &PolicySet, now_ms: u64) {
        let settled = |state: Option<&RateState>, policy: Option<&Arc<BoundPolicy>>| match (state, policy) {
            (None, _) | (Some(_), None) => true,
            // Another strategy's state is dropped at its next use anyway.
            (Some(state), Some(policy)) if state.strategy != policy.strategy => true,
            (Some(state), Some(policy)) => policy.is_full_again(Some(state.words), now_ms),
        };
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let dropped = self.accounts.sweep(now, |provider, account| {
            let binding = set.rate_for(provider);
            settled(account.rate.as_ref(), Some(binding.local()))
                && settled(account.shadow.as_ref(), binding.shadow.as_ref())
        });
        tracing::debug!(dropped, "swept idle accounts from the book");
    }

    /// Decides with the local book or the shared rate state.
    async fn decide<'b>(
        &self,
        attempt: &Attempt<'_>,
        binding: &'b RateBinding,
    ) -> Result<(Reserved, &'b Arc<BoundPolicy>), ApiError> {
        match &self.shared {
            None => {
                Ok((attempt.reserve(&binding.policy, binding.shadow.as_deref(), RateSource::Local)?, &binding.policy))
            }
            Some(shared) => shared.decide(attempt, binding).await,
        }
    }

    /// Gives back a reservation whose debit was not committed: the quotas, and the rate
    /// capacity (in the book, or in the shared store when nothing has written since).
    async fn undo(
        &self,
        attempt: &Attempt<'_>,
        rate: Option<&(Option<RateState>, RateState)>,
        local: bool,
        periods: Periods,
    ) {
        attempt.release(periods, rate, local);
        if let (Some(shared), Some((read, applied)), false) = (&self.shared, rate, local) {
            shared.restore(attempt.req.user_id, &attempt.req.provider, applied, read.as_ref()).await;
        }
    }
}

/// The usage event of a request.
pub(crate) fn event(req: &ConsumeRequest, org_id: Option<Uuid>, now: i64, outcome: Outcome) -> Event {
    Event {
        id: Uuid::now_v7(),
        outcome,
        user_id: req.user_id,
        org_id,
        provider: req.provider.clone(),
        model: req.model.clone(),
        tokens: req.tokens,
        occurred_at: now,
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
