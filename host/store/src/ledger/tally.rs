//! [`Arbiter::Caller`](super::Arbiter::Caller): this process is the database's only writer and
//! its account book already decided every debit, so the commit adds the debits to the stored
//! counters without reading them first (one statement for the users' rows, one per org row).
//!
//! Each row's counter moves to the latest period a debit of the batch was decided in: a debit
//! of a later period than the stored one starts the counter again, a debit of an earlier one
//! (decided just before the period turned) no longer counts.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::writes::Writes;
use super::{Debit, QuotaRow, write_quota_rows};
use crate::StoreError;

/// What the debits of one quota row add up to.
struct Tally {
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
}

/// Adds `debits` to the stored counters of the users' quotas (creating a first spender's row
/// with the limit its process decided on) and of the org quotas their processes charged.
pub(super) async fn tally<'q>(writes: &mut Writes<'_, 'q>, debits: &[&'q Debit], now: i64) -> Result<(), StoreError> {
    let mut users: BTreeMap<(Uuid, &'q str), Tally> = BTreeMap::new();
    let mut orgs: BTreeMap<(Uuid, &'q str), Tally> = BTreeMap::new();
    for d in debits {
        let start = d.user_period_start;
        users
            .entry((d.user_id, d.provider.as_str()))
            .or_insert(Tally { limit: d.user_limit, period_start: start, cost: 0 })
            .add(start, d.cost);
        if let Some((org, Some(start))) = d.org {
            orgs.entry((org, d.provider.as_str()))
                .or_insert(Tally { limit: 0, period_start: start, cost: 0 })
                .add(start, d.cost);
        }
    }

    let users: Vec<QuotaRow> = users
        .into_iter()
        .map(|((id, provider), tally)| QuotaRow {
            owner_type: "user",
            owner_id: id,
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

    // An org quota exists when its process charged it; nothing creates one here.
    for ((org, provider), tally) in orgs {
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
                    .bind(provider);
            })
            .await?;
    }
    Ok(())
}
