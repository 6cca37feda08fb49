//! Deciding and reserving under the account locks: the rate verdict, the user quota and the org
//! quota are checked together and, only if all three agree, all applied together. No await
//! happens under the locks.

use std::sync::Arc;

use leaky_engine::{Outcome as RateOutcome, Request};
use leaky_store::events::Outcome;
use leaky_store::ledger::{Debit, Standing};
use uuid::Uuid;

use crate::error::ApiError;
use crate::services::accounts::{Account, AccountCell, OrgCell, RateState, lock, state_for};
use crate::services::consume::{ConsumeOutcome, ConsumeRequest, QuotaView, event};
use crate::services::policies::BoundPolicy;

/// One request's decision inputs.
pub struct Attempt<'a> {
    /// The request.
    pub req: &'a ConsumeRequest,
    /// The user's org.
    pub org_id: Option<Uuid>,
    /// The user's account for the provider.
    pub account: &'a AccountCell,
    /// The org's quota for the provider, if it has one.
    pub org: Option<&'a (Uuid, OrgCell)>,
    /// What the request costs against the quotas.
    pub cost: i64,
    /// Now, in ms since the epoch.
    pub now: i64,
}

/// Where the rate state a decision starts from lives.
pub enum RateSource {
    /// The account's own: the decision reads and writes it under the lock.
    Local,
    /// Read from the shared store: the decision starts from it and leaves the account's alone.
    Shared(Option<RateState>),
}

/// A decision, with its reservation applied.
pub struct Reserved {
    /// What to answer.
    pub outcome: ConsumeOutcome,
    /// The debit to commit, when admitted.
    pub debit: Option<Debit>,
    /// When admitted: the rate state the decision started from and the one it produced.
    pub rate: Option<(Option<RateState>, RateState)>,
    /// Whether the rate state was the account's own (not the shared store's).
    pub local: bool,
}

/// The quota periods a reservation was made in (a release in a later period changes nothing).
#[derive(Clone, Copy)]
pub struct Periods {
    user: i64,
    org: Option<i64>,
}

impl Periods {
    /// The periods of `debit`.
    pub fn of(debit: &Debit) -> Self {
        Self { user: debit.user_period_start, org: debit.org.and_then(|(_, start)| start) }
    }
}

fn view(q: &leaky_store::quotas::Quota) -> QuotaView {
    QuotaView { limit: q.limit, used: q.used, reset_at: q.reset_at() }
}

impl Attempt<'_> {
    /// Decides with `policy` (and counts `shadow`'s verdict), and reserves the quotas (and, for
    /// a local source, the rate state) when every check passes.
    pub fn reserve(
        &self,
        policy: &BoundPolicy,
        shadow: Option<&BoundPolicy>,
        source: RateSource,
    ) -> Result<Reserved, ApiError> {
        let req = self.req;
        let mut acct = lock(self.account);
        let mut org_quota = self.org.map(|(_, cell)| lock(cell));
        acct.used_at = self.now;
        acct.quota.roll(self.now);
        if let Some(q) = org_quota.as_deref_mut() {
            q.roll(self.now);
        }
        let request = Request { tokens: req.tokens, now_ms: u64::try_from(self.now).unwrap_or(0) };
        let (local, read) = match source {
            RateSource::Local => (true, acct.rate.clone()),
            RateSource::Shared(read) => (false, read),
        };
        let start = state_for(read.as_ref(), &policy.strategy);
        let decision = policy.limiter.decide(&policy.config, start, request).map_err(anyhow::Error::from)?;
        if let Some(shadow) = shadow {
            run_shadow(shadow, &mut acct, request, &req.provider);
        }
        let rate = decision.verdict;
        if rate.outcome != RateOutcome::Allowed {
            return Ok(Reserved { outcome: ConsumeOutcome::RateLimited { rate }, debit: None, rate: None, local });
        }
        if acct.quota.used + self.cost > acct.quota.limit {
            let outcome = ConsumeOutcome::QuotaExhausted { scope: "user", quota: view(&acct.quota), rate };
            return Ok(Reserved { outcome, debit: None, rate: None, local });
        }
        if let Some(q) = org_quota.as_deref().filter(|q| q.used + self.cost > q.limit) {
            let outcome = ConsumeOutcome::QuotaExhausted { scope: "org", quota: view(q), rate };
            return Ok(Reserved { outcome, debit: None, rate: None, local });
        }
        let applied = RateState { strategy: Arc::clone(&policy.strategy), words: decision.state };
        if local {
            acct.rate = Some(applied.clone());
        }
        acct.quota.used += self.cost;
        if let Some(q) = org_quota.as_deref_mut() {
            q.used += self.cost;
        }
        let org = self.org.zip(org_quota.as_deref());
        let debit = Debit {
            entry_id: Uuid::now_v7(),
            user_id: req.user_id,
            // The org goes with the debit even when this process knows no quota of it: the
            // database charges the org's quota if it has one now.
            org: self.org_id.map(|id| (id, org.map(|(_, q)| q.period_start))),
            provider: req.provider.clone(),
            tokens: req.tokens,
            cost: self.cost,
            user_period_start: acct.quota.period_start,
            user_limit: acct.quota.limit,
            request_id: req.request_id.clone(),
            event: event(req, self.org_id, self.now, Outcome::Allowed),
        };
        let outcome =
            ConsumeOutcome::Allowed { user: view(&acct.quota), org: org.map(|((id, _), q)| (*id, view(q))), rate };
        Ok(Reserved { outcome, debit: Some(debit), rate: Some((read, applied)), local })
    }

    /// Takes in the quota standings the database reported for this request.
    pub fn adopt(&self, user: Option<Standing>, org: Option<Standing>) {
        if let Some(s) = user {
            lock(self.account).quota.adopt(s.limit, s.used, s.period_start);
        }
        if let (Some((_, cell)), Some(s)) = (self.org, org) {
            lock(cell).adopt(s.limit, s.used, s.period_start);
        }
    }

    /// Gives back what [`Self::reserve`] took: the quotas (if still in the same periods) and,
    /// for a local source, the rate state, unless another request has moved it on since (then
    /// the limiter stays the stricter of the two, never the looser).
    pub fn release(&self, periods: Periods, rate: Option<&(Option<RateState>, RateState)>, local: bool) {
        let mut acct = lock(self.account);
        if acct.quota.period_start == periods.user {
            acct.quota.used -= self.cost;
        }
        if local
            && let Some((before, applied)) = rate
            && acct.rate.as_ref() == Some(applied)
        {
            acct.rate = before.clone();
        }
        drop(acct);
        if let (Some((_, cell)), Some(start)) = (self.org, periods.org) {
            let mut q = lock(cell);
            if q.period_start == start {
                q.used -= self.cost;
            }
        }
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
