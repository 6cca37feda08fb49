//! The in-memory book of quotas and rate state that every decision reads and updates.
//!
//! Each (user, provider) is an [`Account`] behind its own mutex: its rate-limiter state and its
//! quota. Each (org, provider) with a quota is an org account. A decision locks the user's
//! account, then the org's (always in that order), decides, applies, and unlocks: no await
//! inside, so the critical section is a few microseconds. The database is the durable copy:
//! accounts are loaded from it on first use, and every applied debit is committed to it (by
//! the ledger writer) before the caller is answered; a debit whose commit fails is undone.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use leaky_engine::Words;
use leaky_store::Database;
use leaky_store::quotas::{self, OwnerType, Period, Quota};
use uuid::Uuid;

use crate::error::ApiError;

/// A rate limiter's state, tagged with the strategy that wrote it: a policy swap keeps the
/// state when the new version reports the same strategy, and starts afresh otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    /// The strategy that wrote `words`.
    pub strategy: Arc<str>,
    /// The state.
    pub words: Words,
}

/// One user's standing with one provider.
#[derive(Debug)]
pub struct Account {
    /// The rate limiter's state; `None` until the first admitted request.
    pub rate: Option<RateState>,
    /// The state of the shadow limiter, if the provider has one.
    pub shadow: Option<RateState>,
    /// The user's quota.
    pub quota: Quota,
}

impl Account {
    /// The rate state to pass to a limiter of `strategy`.
    pub fn rate_for(&self, strategy: &str) -> Option<Words> {
        state_for(self.rate.as_ref(), strategy)
    }

    /// The shadow state to pass to a limiter of `strategy`.
    pub fn shadow_for(&self, strategy: &str) -> Option<Words> {
        state_for(self.shadow.as_ref(), strategy)
    }
}

/// The words of `state` when a limiter of `strategy` wrote them (another strategy's state means
/// something else, so a limiter starts afresh).
pub fn state_for(state: Option<&RateState>, strategy: &str) -> Option<Words> {
    state.filter(|s| &*s.strategy == strategy).map(|s| s.words)
}

/// How long facts about a user are trusted when other replicas may change them. Quotas do not
/// depend on it (the ledger's commit charges the org the user is in as stored); a membership
/// changed on another replica reaches this one's refusals and usage events within it.
pub const SHARED_FACTS_TTL: Duration = Duration::from_secs(30);

/// A shared, lockable account.
pub type AccountCell = Arc<Mutex<Account>>;
/// A shared, lockable org quota.
pub type OrgCell = Arc<Mutex<Quota>>;

/// Facts about a user the hot path needs.
#[derive(Clone, Copy, Debug)]
pub struct UserFacts {
    /// The user's org, if any.
    pub org_id: Option<Uuid>,
}

/// The book.
pub struct Accounts {
    db: Database,
    users: DashMap<(Uuid, String), AccountCell>,
    orgs: DashMap<(Uuid, String), Option<OrgCell>>,
    facts: DashMap<Uuid, (UserFacts, Instant)>,
    default_limit: Box<dyn Fn(&str) -> u64 + Send + Sync>,
}

/// Locks a mutex, recovering from poisoning (a panic elsewhere never wedges an account).
pub fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Accounts {
    /// A book over the database; `default_limit` gives a new user's quota for a provider.
    pub fn new(db: Database, default_limit: impl Fn(&str) -> u64 + Send + Sync + 'static) -> Self {
        Self {
            db,
            users: DashMap::new(),
            orgs: DashMap::new(),
            facts: DashMap::new(),
            default_limit: Box::new(default_limit),
        }
    }

    /// Facts about a user; `None` when there is no such user. On a shared database they are
    /// read again after [`SHARED_FACTS_TTL`], so an org change made on another replica applies
    /// here within it.
    pub async fn user(&self, user: Uuid) -> Result<Option<UserFacts>, ApiError> {
        if let Some(entry) = self.facts.get(&user)
            && (!self.db.is_shared() || entry.1.elapsed() < SHARED_FACTS_TTL)
        {
            return Ok(Some(entry.0));
        }
        let Some(stored) = leaky_store::users::by_id(self.db.readers(), user).await? else { return Ok(None) };
        let facts = UserFacts { org_id: stored.org_id };
        self.facts.insert(user, (facts, Instant::now()));
        Ok(Some(facts))
    }

    /// Forgets cached facts about a user (after an org change).
    pub fn forget_user(&self, user: Uuid) {
        self.facts.remove(&user);
    }

    /// Forgets what this process knows of an org's quota for a provider (it is read again on
    /// next use).
    pub fn forget_org(&self, org: Uuid, provider: &str) {
        self.orgs.remove(&(org, provider.to_string()));
    }

    /// The account of (user, provider): its stored quota, or, for a first use, the default limit
    /// (the row is created by the first committed debit or credit, so a new user costs no write).
    pub async fn account(&self, user: Uuid, provider: &str) -> Result<AccountCell, ApiError> {
        let key = (user, provider.to_string());
        if let Some(cell) = self.users.get(&key) {
            return Ok(Arc::clone(&cell));
        }
        let limit = i64::try_from((self.default_limit)(provider)).unwrap_or(i64::MAX);
        let fresh = Quota {
            owner_type: OwnerType::User,
            owner_id: user,
            provider: provider.to_string(),
            limit,
            used: 0,
            period: Period::None,
            period_start: 0,
        };
        let quota = quotas::get(self.db.readers(), OwnerType::User, user, provider).await?.unwrap_or(fresh);
        let cell =
            self.users.entry(key).or_insert_with(|| Arc::new(Mutex::new(Account { rate: None, shadow: None, quota })));
        Ok(Arc::clone(&cell))
    }

    /// The quota of (org, provider), if the org has one.
    pub async fn org(&self, org: Uuid, provider: &str) -> Result<Option<OrgCell>, ApiError> {
        let key = (org, provider.to_string());
        if let Some(cell) = self.orgs.get(&key) {
            return Ok(cell.clone());
        }
        let quota = quotas::get(self.db.readers(), OwnerType::Org, org, provider).await?;
        let cell = self.orgs.entry(key).or_insert_with(|| quota.map(|q| Arc::new(Mutex::new(q))));
        Ok(cell.clone())
    }

    /// Whether other processes spend from the same quotas (the database is shared), so this
    /// book's counts can be behind the stored ones.
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    /// Takes in the stored standing of the user's quota and, when `org` is given, the org's
    /// (before refusing a request for a quota another process may have raised).
    pub async fn refresh(
        &self,
        account: &AccountCell,
        user: Uuid,
        provider: &str,
        org: Option<&(Uuid, OrgCell)>,
    ) -> Result<(), ApiError> {
        if let Some(q) = quotas::get(self.db.readers(), OwnerType::User, user, provider).await? {
            lock(account).quota.adopt(q.limit, q.used, q.period_start);
        }
        if let Some((id, cell)) = org
            && let Some(q) = quotas::get(self.db.readers(), OwnerType::Org, *id, provider).await?
        {
            lock(cell).adopt(q.limit, q.used, q.period_start);
        }
        Ok(())
    }

    /// Applies an admin's new limit and period (the database already has them).
    pub async fn apply_quota(&self, quota: &Quota) -> Result<(), ApiError> {
        match quota.owner_type {
            OwnerType::User => {
                let cell = self.account(quota.owner_id, &quota.provider).await?;
                let mut account = lock(&cell);
                account.quota.limit = quota.limit;
                account.quota.period = quota.period;
                account.quota.period_start = quota.period_start;
            }
            OwnerType::Org => {
                let key = (quota.owner_id, quota.provider.clone());
                let cell = self.orgs.entry(key).or_insert(None).clone();
                match cell {
                    Some(cell) => {
                        let mut q = lock(&cell);
                        q.limit = quota.limit;
                        q.period = quota.period;
                        q.period_start = quota.period_start;
                    }
                    None => {
                        self.orgs.insert(
                            (quota.owner_id, quota.provider.clone()),
                            Some(Arc::new(Mutex::new(quota.clone()))),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
