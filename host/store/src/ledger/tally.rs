//! What debits add up to, per quota row, and how a sum is written back to `quotas`.
//!
//! With [`Arbiter::Caller`](super::Arbiter::Caller) this process is the database's only writer
//! and its account book already decided every debit, so the counters are added to without being
//! read first (one statement for the users' rows, one per org row).
//!
//! Each row's counter moves to the latest period a debit was decided in: a debit of a later
//! period than the stored one starts the counter again, a debit of an earlier one (decided just
//! before the period turned) no longer counts. [`Tally::add`] folds debits the same way, so
//! folding many commits' debits first and writing the sum once leaves the row as writing each
//! commit would have.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::writes::Writes;
use super::{Debit, QuotaRow, write_quota_rows};
use crate::StoreError;
use crate::quotas::{OwnerType, Period, Quota};

/// Records (SQLite) that the counters include every ledger row written so far.
pub(super) const WRITTEN_BACK_THROUGH_LAST_ROW: &str =
    "UPDATE quota_writeback SET through_seq = (SELECT COALESCE(MAX(seq), 0) FROM ledger) WHERE id = 1";

/// What the debits of one quota row add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// The limit to store if the row does not exist yet (a user's first spend).
    limit: i64,
    /// The latest period a debit was decided in.
    period_start: i64,
    /// What the debits of that period cost.
    cost: i64,
}

impl Tally {
    fn add(&mut self, period_start: i64, cost: i64) {
        if period_start > self.period_start {
            *self = Self { period_start, cost, ..*self };
        } else if period_start == self.period_start {
            self.cost = self.cost.saturating_add(cost);
        }
    }

    /// Folds `later` (debits committed after this tally's) in.
    fn merge(&mut self, later: Tally) {
        self.add(later.period_start, later.cost);
    }

    /// `quota` (as stored) with this tally written back to it, as the write-back's SQL does.
    fn apply(&self, quota: &mut Quota) {
        if self.period_start > quota.period_start {
            quota.used = self.cost;
            quota.period_start = self.period_start;
        } else if self.period_start == quota.period_start {
            quota.used = quota.used.saturating_add(self.cost);
        }
    }
}

/// A quota row's key: its owner and provider.
type Row = (Uuid, String);

/// The tallies of the users' and the orgs' quota rows that debits touched.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tallies {
    users: BTreeMap<Row, Tally>,
    orgs: BTreeMap<Row, Tally>,
}

impl Tallies {
    /// The tallies of `debits`.
    pub(crate) fn of(debits: &[&Debit]) -> Self {
        let mut tallies = Self::default();
        for d in debits {
            tallies.add(d.user_id, d.org, &d.provider, d.user_period_start, d.user_limit, d.cost);
        }
        tallies
    }

    /// Adds one debit: `cost` against the user's quota (created with `user_limit` if it has no
    /// row) and against the org quota its process charged, if any.
    pub(crate) fn add(
        &mut self,
        user: Uuid,
        org: Option<(Uuid, Option<i64>)>,
        provider: &str,
        user_period_start: i64,
        user_limit: i64,
        cost: i64,
    ) {
        self.users
            .entry((user, provider.to_string()))
            .or_insert(Tally { limit: user_limit, period_start: user_period_start, cost: 0 })
            .add(user_period_start, cost);
        if let Some((org, Some(start))) = org {
            self.orgs
                .entry((org, provider.to_string()))
                .or_insert(Tally { limit: 0, period_start: start, cost: 0 })
                .add(start, cost);
        }
    }

    /// Folds `later` (the tallies of debits committed after these) in.
    pub(crate) fn merge(&mut self, later: Tallies) {
        for (into, from) in [(&mut self.users, later.users), (&mut self.orgs, later.orgs)] {
            for (row, tally) in from {
                match into.get_mut(&row) {
                    Some(earlier) => earlier.merge(tally),
                    None => {
                        into.insert(row, tally);
                    }
                }
            }
        }
    }

    /// Whether no debit is tallied.
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty() && self.orgs.is_empty()
    }

    /// How many quota rows are tallied.
    pub(crate) fn rows(&self) -> usize {
        self.users.len() + self.orgs.len()
    }

    /// The tallies of users' rows, or of orgs'.
    fn of_owners(&self, owner: OwnerType) -> &BTreeMap<Row, Tally> {
        match owner {
            OwnerType::User => &self.users,
            OwnerType::Org => &self.orgs,
        }
    }

    /// The providers of `owner`'s tallied quota rows.
    pub(crate) fn providers(&self, owner: OwnerType, owner_id: Uuid) -> impl Iterator<Item = &str> {
        self.of_owners(owner)
            .range((owner_id, String::new())..)
            .take_while(move |((id, _), _)| *id == owner_id)
            .map(|((_, provider), _)| provider.as_str())
    }

    /// `quota` (a stored row) with its tally, if any, written back to it.
    pub(crate) fn add_to(&self, quota: &mut Quota) {
        if let Some(tally) = self.of_owners(quota.owner_type).get(&(quota.owner_id, quota.provider.clone())) {
            tally.apply(quota);
        }
    }

    /// The quota of `owner` for `provider` as stored (`stored`), with these tallies written back
    /// to it: a user's first spend makes the row the write-back would create; an org quota with
    /// no row stays without one.
    pub(crate) fn overlay(
        &self,
        owner: OwnerType,
        owner_id: Uuid,
        provider: &str,
        stored: Option<Quota>,
    ) -> Option<Quota> {
        let tally = self.of_owners(owner).get(&(owner_id, provider.to_string()));
        match (stored, tally) {
            (Some(mut quota), Some(tally)) => {
                tally.apply(&mut quota);
                Some(quota)
            }
            (None, Some(tally)) if owner == OwnerType::User => Some(Quota {
                owner_type: owner,
                owner_id,
                provider: provider.to_string(),
                limit: tally.limit,
                used: tally.cost,
                period: Period::None,
                period_start: tally.period_start,
            }),
            (stored, _) => stored,
        }
    }
}

/// Writes `tallies` back to the stored counters, stamped `now` (creating a first spender's row
/// with the limit its process decided on; an org quota exists when its process charged it, so
/// nothing creates one here).
pub(super) async fn write_back<'q>(
    writes: &mut Writes<'_, 'q>,
    tallies: &'q Tallies,
    now: i64,
) -> Result<(), StoreError> {
    let users: Vec<QuotaRow> = tallies
        .users
        .iter()
        .map(|((id, provider), tally)| QuotaRow {
            owner_type: "user",
            owner_id: *id,
            provider,
            limit: tally.limit,
            used: tally.cost,
            period: "none",
            period_start: tally.period_start,
        })
        .collect();
    write_quota_rows(
        writes,
        &users,
        now,
        "DO UPDATE SET \
         used = CASE WHEN excluded.period_start > quotas.period_start THEN excluded.used \
                     WHEN excluded.period_start = quotas.period_start THEN quotas.used + excluded.used \
                     ELSE quotas.used END, \
         period_start = CASE WHEN excluded.period_start > quotas.period_start \
                             THEN excluded.period_start ELSE quotas.period_start END, \
         updated_at = excluded.updated_at",
    )
    .await?;

    for ((org, provider), tally) in &tallies.orgs {
        writes
            .statement(|sql| {
                let (start, cost) = (tally.period_start, tally.cost);
                sql.push("UPDATE quotas SET used = CASE WHEN ")
                    .bind(start)
                    .push(" > period_start THEN ")
                    .bind(cost)
                    .push(" WHEN ")
                    .bind(start)
                    .push(" = period_start THEN used + ")
                    .bind(cost)
                    .push(" ELSE used END, period_start = CASE WHEN ")
                    .bind(start)
                    .push(" > period_start THEN ")
                    .bind(start)
                    .push(" ELSE period_start END, updated_at = ")
                    .bind(now)
                    .push(" WHERE owner_type = 'org' AND owner_id = ")
                    .bind(org.to_string())
                    .push(" AND provider = ")
                    .bind(provider.as_str());
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn stored(used: i64, period_start: i64) -> Quota {
        Quota {
            owner_type: OwnerType::User,
            owner_id: Uuid::nil(),
            provider: "openai".into(),
            limit: 100,
            used,
            period: Period::Daily,
            period_start,
        }
    }

    #[test]
    fn folding_commits_first_equals_writing_each() {
        // Three commits: one in the stored period, one of an earlier period (decided just before
        // it turned), one starting the next period.
        let commits = [(DAY, 5), (0, 7), (DAY, 2), (2 * DAY, 3), (DAY, 4), (2 * DAY, 1)];
        let mut each = stored(10, DAY);
        let mut folded: Option<Tally> = None;
        for (start, cost) in commits {
            let one = Tally { limit: 100, period_start: start, cost };
            one.apply(&mut each);
            match folded.as_mut() {
                Some(t) => t.merge(one),
                None => folded = Some(one),
            }
        }
        let mut once = stored(10, DAY);
        folded.expect("tallied").apply(&mut once);
        assert_eq!(once, each);
        assert_eq!((once.used, once.period_start), (4, 2 * DAY));
    }

    #[test]
    fn an_overlay_reads_as_the_write_back_would_leave_the_row() {
        let (user, org) = (Uuid::now_v7(), Uuid::now_v7());
        let mut tallies = Tallies::default();
        tallies.add(user, Some((org, Some(DAY))), "openai", DAY, 50, 3);
        let mut later = Tallies::default();
        later.add(user, Some((org, Some(DAY))), "openai", DAY, 50, 4);
        later.add(user, None, "anthropic", 0, 20, 1);
        tallies.merge(later);
        assert_eq!(tallies.rows(), 3);

        let row = tallies.overlay(OwnerType::User, user, "openai", Some(stored(10, DAY))).expect("row");
        assert_eq!(row.used, 17);
        let first = tallies.overlay(OwnerType::User, user, "anthropic", None).expect("a first spend's row");
        assert_eq!((first.limit, first.used, first.period, first.period_start), (20, 1, Period::None, 0));
        assert_eq!(tallies.overlay(OwnerType::Org, org, "openai", None), None, "no org row is made up");
        let org_row = Quota { owner_type: OwnerType::Org, owner_id: org, ..stored(1, DAY) };
        assert_eq!(tallies.overlay(OwnerType::Org, org, "openai", Some(org_row)).map(|q| q.used), Some(8));
        let other = stored(10, DAY);
        assert_eq!(tallies.overlay(OwnerType::User, Uuid::now_v7(), "openai", Some(other.clone())), Some(other));
    }
}
