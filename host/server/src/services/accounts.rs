//! The in-memory book of quotas and rate state that every decision reads and updates.
//!
//! Each (user, provider) is an [`Account`] behind its own mutex: its rate-limiter state and its
//! quota. Each (org, provider) with a quota is an org account. A decision locks the user's
//! account, then the org's (always in that order), decides, applies, and unlocks: no await
//! inside, so the critical section is a few microseconds. The database is the durable copy:
//! accounts are loaded from it on first use, and every applied debit is committed to it (by
//! the ledger writer) before the caller is answered; a debit whose commit fails is undone.
//!
//! The book does not keep every account for ever. Once it holds more than its threshold, a
//! sweep ([`Accounts::sweep`]) drops the accounts no request holds whose state the caller
//! calls settled (the decision service: a rate state that is full again). Such an account is
//! just what a load from the database gives back: no request holds it, so every debit made
//! through it has committed. A load races with a sweep only this way: it reads the stored
//! quota, a request creates the account meanwhile and spends through it, a sweep drops it, and
//! the load would insert its older reading. So sweeps are counted, odd while one runs, and a
//! load keeps its reading only when no sweep began since before it read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
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
    /// When a request last decided through the account (ms since the epoch).
    pub used_at: i64,
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

/// When the book drops idle accounts.
#[derive(Clone, Copy, Debug)]
pub struct BookLimits {
    /// Accounts held when a sweep is first due.
    pub sweep_at: usize,
    /// How long an account goes unused before a sweep may drop it.
    pub idle: Duration,
}

/// The book.
pub struct Accounts {
    db: Database,
    users: DashMap<(Uuid, String), AccountCell>,
    orgs: DashMap<(Uuid, String), Option<OrgCell>>,
    facts: DashMap<Uuid, (UserFacts, Instant)>,
    default_limit: Box<dyn Fn(&str) -> u64 + Send + Sync>,
    /// Sweeps begun and ended: odd while one runs.
    sweeps: AtomicU64,
    /// Accounts in `users`, kept beside it so that asking costs no shard locks.
    held: AtomicUsize,
    /// Accounts held when the next sweep is due.
    sweep_at: AtomicUsize,
    /// The least `sweep_at` ever is.
    first_sweep_at: usize,
    /// How long an account goes unused before a sweep may drop it (ms).
    idle_ms: i64,
    /// Accounts dropped by sweeps.
    evicted: AtomicU64,
}

/// Locks a mutex, recovering from poisoning (a panic elsewhere never wedges an account).
pub fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Accounts {
    /// A book over the database; `default_limit` gives a new user's quota for a provider. A
    /// sweep is due once it holds `limits.sweep_at` accounts (at least 1), then once it holds
    /// twice what the last sweep kept.
    pub fn new(db: Database, default_limit: impl Fn(&str) -> u64 + Send + Sync + 'static, limits: BookLimits) -> Self {
        let sweep_at = limits.sweep_at.max(1);
        Self {
            db,
            users: DashMap::new(),
            orgs: DashMap::new(),
            facts: DashMap::new(),
            default_limit: Box::new(default_limit),
            sweeps: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            sweep_at: AtomicUsize::new(sweep_at),
            first_sweep_at: sweep_at,
            idle_ms: i64::try_from(limits.idle.as_millis()).unwrap_or(i64::MAX),
            evicted: AtomicU64::new(0),
        }
    }

    /// Whether the book holds enough accounts for a sweep.
    pub fn sweep_due(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.sweep_at.load(Ordering::Relaxed)
    }

    /// Drops every account that no request holds, that no request used for the book's idle
    /// time before `now` (ms), and whose state `settled` (given the provider and the account)
    /// says a fresh load would equal; returns how many. A sweep already running makes this one
    /// return 0 at once.
    pub fn sweep(&self, now: i64, settled: impl Fn(&str, &Account) -> bool) -> usize {
        let begun = self.sweeps.load(Ordering::Acquire);
        if begun % 2 == 1
            || self.sweeps.compare_exchange(begun, begun + 1, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return 0;
        }
        let idle_since = now.saturating_sub(self.idle_ms);
        let mut dropped = 0;
        // The map's shard is locked for writing here, so nobody can take a new reference to a
        // cell meanwhile; a count of one is the map's own.
        self.users.retain(|(_, provider), cell| {
            let keep = Arc::strong_count(cell) > 1 || {
                let account = lock(cell);
                account.used_at > idle_since || !settled(provider, &account)
            };
            dropped += usize::from(!keep);
            keep
        });
        self.sweeps.fetch_add(1, Ordering::AcqRel);
        self.held.fetch_sub(dropped, Ordering::Relaxed);
        let kept = self.users.len();
        self.sweep_at.store(self.first_sweep_at.max(kept.saturating_mul(2)), Ordering::Relaxed);
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        metrics::counter!("leaky_accounts_evicted_total").increment(dropped as u64);
        metrics::gauge!("leaky_accounts_kept").set(kept as f64);
        dropped
    }

    /// Accounts dropped by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
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
        loop {
            if let Some(cell) = self.users.get(&key) {
                return Ok(Arc::clone(&cell));
            }
            let Some(sweeps) = self.sweeps_between() else {
                tokio::task::yield_now().await;
                continue;
            };
            let quota = self.stored_quota(user, provider).await?;
            if let Some(cell) = self.keep_loaded(&key, quota, sweeps) {
                return Ok(cell);
            }
        }
    }

    /// The count of sweeps, when none is running.
    fn sweeps_between(&self) -> Option<u64> {
        Some(self.sweeps.load(Ordering::Acquire)).filter(|sweeps| sweeps % 2 == 0)
    }

    /// The stored quota of (user, provider), or the default for a first use.
    async fn stored_quota(&self, user: Uuid, provider: &str) -> Result<Quota, ApiError> {
        let stored = quotas::get(&self.db, OwnerType::User, user, provider).await?;
        Ok(stored.unwrap_or_else(|| Quota {
            owner_type: OwnerType::User,
            owner_id: user,
            provider: provider.to_string(),
            limit: i64::try_from((self.default_limit)(provider)).unwrap_or(i64::MAX),
            used: 0,
            period: Period::None,
            period_start: 0,
        }))
    }

    /// The account of `key` after a load read `quota` when the sweep count was `sweeps`: the
    /// account already in the book, else a new one with `quota`, unless a sweep began since the
    /// read (it may have dropped an account spent through after it); then `None`: read again.
    fn keep_loaded(&self, key: &(Uuid, String), quota: Quota, sweeps: u64) -> Option<AccountCell> {
        match self.users.entry(key.clone()) {
            Entry::Occupied(cell) => Some(Arc::clone(cell.get())),
            Entry::Vacant(_) if self.sweeps.load(Ordering::Acquire) != sweeps => None,
            Entry::Vacant(slot) => {
                let used_at = leaky_store::now_ms();
                let cell = Arc::new(Mutex::new(Account { rate: None, shadow: None, quota, used_at }));
                slot.insert(Arc::clone(&cell));
                self.held.fetch_add(1, Ordering::Relaxed);
                Some(cell)
            }
        }
    }

    /// The quota of (org, provider), if the org has one.
    pub async fn org(&self, org: Uuid, provider: &str) -> Result<Option<OrgCell>, ApiError> {
        let key = (org, provider.to_string());
        if let Some(cell) = self.orgs.get(&key) {
            return Ok(cell.clone());
        }
        let quota = quotas::get(&self.db, OwnerType::Org, org, provider).await?;
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
        if let Some(q) = quotas::get(&self.db, OwnerType::User, user, provider).await? {
            lock(account).quota.adopt(q.limit, q.used, q.period_start);
        }
        if let Some((id, cell)) = org
            && let Some(q) = quotas::get(&self.db, OwnerType::Org, *id, provider).await?
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn book(sweep_at: usize) -> (Accounts, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&format!("sqlite://{}", dir.path().join("book.db").display())).await.unwrap();
        (Accounts::new(db, |_| 100, BookLimits { sweep_at, idle: Duration::ZERO }), dir)
    }

    #[tokio::test]
    async fn a_sweep_drops_idle_settled_accounts_and_keeps_those_in_use() {
        let (book, _dir) = book(3).await;
        let (alice, bob, carol) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let in_use = book.account(alice, "openai").await.unwrap();
        drop(book.account(bob, "openai").await.unwrap());
        assert!(!book.sweep_due());
        drop(book.account(carol, "openai").await.unwrap());
        assert!(book.sweep_due());
        // Carol's state is not settled (say, her rate state is still refilling).
        let now = leaky_store::now_ms();
        assert_eq!(book.sweep(now, |_, account| account.quota.owner_id != carol), 1, "only bob's");
        assert_eq!(book.evicted(), 1);
        assert!(Arc::ptr_eq(&in_use, &book.account(alice, "openai").await.unwrap()), "alice's is the same");
        assert!(!book.sweep_due(), "next due at twice what was kept");
        drop(in_use);
        lock(&book.account(alice, "openai").await.unwrap()).used_at = now + 1;
        assert_eq!(book.sweep(now, |_, _| true), 1, "alice's was used after the sweep's idle time began");
        assert_eq!(book.sweep(now + 1, |_, _| true), 1);
    }

    #[tokio::test]
    async fn a_load_that_a_sweep_overtook_reads_the_quota_again() {
        let (book, _dir) = book(1).await;
        let (user, provider) = (Uuid::now_v7(), "openai");
        let key = (user, provider.to_string());

        // A load reads the stored quota (nothing spent yet) ...
        let sweeps = book.sweeps_between().unwrap();
        let stale = book.stored_quota(user, provider).await.unwrap();
        // ... meanwhile another request creates the account, spends through it, and a sweep
        // drops it once that request is done.
        let other = book.account(user, provider).await.unwrap();
        lock(&other).quota.used = 7;
        drop(other);
        assert_eq!(book.sweep(leaky_store::now_ms(), |_, _| true), 1);
        // The load must not put its older reading in the book.
        assert!(book.keep_loaded(&key, stale.clone(), sweeps).is_none());
        // Without a sweep in between, a load keeps what it read, or the account already there.
        let sweeps = book.sweeps_between().unwrap();
        let kept = book.keep_loaded(&key, stale.clone(), sweeps).unwrap();
        assert!(Arc::ptr_eq(&kept, &book.keep_loaded(&key, stale, sweeps).unwrap()));
    }
}
