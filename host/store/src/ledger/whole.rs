//! PostgreSQL's first step in committing a batch ([`super::split`]): the debits of every user
//! whose whole spend in the batch fits, spent in one conditional update, in one statement with
//! their ledger rows and events.
//!
//! Most batches spend far below the limits, and most users belong to no org. For such a user,
//! deciding the debits one by one under lock grants every one of them, so the update grants
//! them together: it adds the user's total to the row where the total fits, and answers the
//! row as changed. That is one statement and one row version a user, where reading the row
//! under lock and writing it back takes two statements and two. Whatever the update leaves
//! (a total that does not fit, a user in an org, a first spend with no row yet, a row another
//! replica changed meanwhile) is decided under lock after it, one debit at a time
//! ([`super::arbitrate`]).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::arbitrate::parse_quota_row;
use super::{Committed, Debit, Standing, postgres};
use crate::events::Event;
use crate::{Pool, StoreError};

/// The rows the update changed: each user's quota (for one provider) after its whole spend.
pub(super) struct SpentWhole(BTreeMap<(Uuid, String), Standing>);

impl SpentWhole {
    /// Commits, in one statement on `pool` (a transaction of its own, in one round trip), the
    /// debits of each user (and provider) whose total fits, as of `now`, with their ledger rows,
    /// and writes to the outbox, in `outbox`'s order, the events of the debits it spent and the
    /// events of no debit (`None`).
    pub(super) async fn commit(
        pool: &Pool,
        debits: &[&Debit],
        outbox: &[(&Event, &str, Option<&Debit>)],
        now: i64,
    ) -> Result<Self, StoreError> {
        let mut totals: BTreeMap<(Uuid, &str), i64> = BTreeMap::new();
        for d in debits {
            *totals.entry((d.user_id, d.provider.as_str())).or_default() += d.cost;
        }
        // In key order: the order in which every replica locks users' rows.
        let spends: Vec<(Uuid, &str, i64)> =
            totals.into_iter().map(|((user, provider), total)| (user, provider, total)).collect();
        let statement = postgres::commit_fitting(&spends, debits, outbox, crate::advisory_locks::OUTBOX, now);
        let mut changed = BTreeMap::new();
        for row in statement.fetch_all(pool).await? {
            let (user, provider, _, standing) = parse_quota_row(&row)?;
            changed.insert((user, provider), standing);
        }
        Ok(Self(changed))
    }

    /// The answer to each debit of `debits` the update spent, in their order (`None` for the
    /// others): the user's quota as it stood after that debit, the batch's earlier debits of
    /// the user included.
    pub(super) fn answers(&self, debits: &[&Debit]) -> Vec<Option<Committed>> {
        // What each user had spent before the batch: the row as changed, less the batch's total.
        let mut running: BTreeMap<(Uuid, &str), Standing> =
            self.0.iter().map(|((user, provider), after)| ((*user, provider.as_str()), *after)).collect();
        for d in debits {
            if let Some(standing) = running.get_mut(&(d.user_id, d.provider.as_str())) {
                standing.used -= d.cost;
            }
        }
        debits
            .iter()
            .map(|d| {
                let standing = running.get_mut(&(d.user_id, d.provider.as_str()))?;
                standing.used += d.cost;
                Some(Committed::Spent { user: *standing, org: None })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Outcome};

    fn debit(user: Uuid, cost: i64) -> Debit {
        Debit {
            entry_id: Uuid::now_v7(),
            user_id: user,
            org: None,
            provider: "openai".into(),
            tokens: u64::try_from(cost).unwrap(),
            cost,
            user_period_start: 0,
            user_limit: 100,
            request_id: None,
            event: Event {
                id: Uuid::now_v7(),
                outcome: Outcome::Allowed,
                user_id: user,
                org_id: None,
                provider: "openai".into(),
                model: None,
                tokens: u64::try_from(cost).unwrap(),
                occurred_at: 0,
            },
        }
    }

    #[test]
    fn each_debit_is_answered_with_the_quota_as_it_stood_after_it() {
        let (alice, bob, carol) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let standing = |used| Standing { limit: 100, used, period_start: 0, reset_at: None };
        // Alice's row went from 10 to 16, Bob's from 0 to 5; Carol's was left to the lock.
        let spent = SpentWhole(BTreeMap::from([
            ((alice, "openai".to_string()), standing(16)),
            ((bob, "openai".to_string()), standing(5)),
        ]));
        let debits = [debit(alice, 1), debit(carol, 7), debit(bob, 5), debit(alice, 2), debit(alice, 3)];
        let debits: Vec<&Debit> = debits.iter().collect();
        let used: Vec<Option<i64>> = spent
            .answers(&debits)
            .into_iter()
            .map(|answer| match answer {
                Some(Committed::Spent { user, org: None }) => Some(user.used),
                None => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(used, [Some(11), None, Some(5), Some(13), Some(16)]);
    }
}
