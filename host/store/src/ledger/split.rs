//! A group commit on PostgreSQL with the database deciding ([`Arbiter::Database`]), in up to two
//! transactions.
//!
//! 1. One statement, in a transaction of its own and one round trip, spends the debits of every
//!    user whose whole spend in the batch fits ([`SpentWhole`]), inserts their ledger rows, and
//!    writes their events and the batch's events of no debit to the outbox. In a steady state
//!    that is the whole batch.
//! 2. What it left (a total that does not fit, a user in an org, a first spend with no row yet,
//!    a row another replica changed meanwhile) is decided under lock ([`arbitrate`]) and
//!    written in a second transaction.
//!
//! A user's debits for one provider are all in one of the two: the first spends them together
//! or not at all. Each debit is answered from the transaction that holds it, so a failure of the
//! second fails only the debits in it. Each transaction is tried again on its own after the
//! database broke a lock cycle or a serialization conflict; the first is never run twice once it
//! committed.
//!
//! Written as one transaction instead, a commit waited for five round trips (`BEGIN`, the
//! update, the ledger insert, the outbox insert, `COMMIT`), each a wake-up of both sides on a
//! busy machine, and the writer commits one batch at a time.
//!
//! [`Arbiter::Database`]: super::Arbiter::Database

use super::arbitrate::arbitrate;
use super::whole::SpentWhole;
use super::writes::Writes;
use super::{
    Answer, Committed, Debit, RETRIES, Write, count_failed, insert_events, insert_ledger, is_transient, payloads,
};
use crate::events::Event;
use crate::{Backend, Pool, StoreError};

/// Commits `batch` (whose debits are `debits`, in order) as of `now`; answers each write.
pub(super) async fn commit(
    pool: &Pool,
    batch: &[Write],
    debits: &[&Debit],
    now: i64,
) -> Result<Vec<Answer>, StoreError> {
    // The batch's events in its order, each with the debit that carries it (none for a refusal).
    let written: Vec<(&Event, Option<&Debit>)> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Debit(d, _) => Some((&d.event, Some(d))),
            Write::Event(e) => Some((e, None)),
            Write::Counters(_) => None,
        })
        .collect();
    let payloads = payloads(&written.iter().map(|(event, _)| *event).collect::<Vec<_>>())?;
    let outbox: Vec<(&Event, &str, Option<&Debit>)> =
        written.iter().zip(&payloads).map(|((event, debit), payload)| (*event, payload.as_str(), *debit)).collect();

    let spent = SpentWhole::commit(pool, debits, &outbox, now).await?.answers(debits);
    // The debits it left, with their events' payloads, in the batch's order.
    let left: Vec<(&Debit, &str)> = outbox
        .iter()
        .filter_map(|(_, payload, debit)| debit.map(|d| (d, *payload)))
        .zip(&spent)
        .filter(|(_, spent)| spent.is_none())
        .map(|(left, _)| left)
        .collect();
    metrics::counter!("leaky_quota_decided_total", "how" => "whole").increment((debits.len() - left.len()) as u64);
    let mut locked = if left.is_empty() {
        Ok(Vec::new().into_iter())
    } else {
        commit_locked(pool, &left, now).await.map(Vec::into_iter)
    };
    if let Err(err) = &locked {
        tracing::error!(error = %err, debits = left.len(), "the debits left to decide under lock failed; each is refused");
        count_failed(left.len());
    }

    let mut spent = spent.into_iter();
    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        let answer = match write {
            Write::Debit(..) => Some(match spent.next().flatten() {
                Some(spent) => Ok(spent),
                None => match &mut locked {
                    Ok(decided) => {
                        decided.next().ok_or_else(|| StoreError::Corrupt("a debit lost its decision".into()))
                    }
                    Err(err) => Err(StoreError::CommitFailed(err.to_string())),
                },
            }),
            Write::Event(_) | Write::Counters(_) => None,
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// Decides `left` under lock and commits what it grants, with the events of those debits
/// (whose payloads come with them); tried again on a transient failure.
async fn commit_locked(pool: &Pool, left: &[(&Debit, &str)], now: i64) -> Result<Vec<Committed>, StoreError> {
    let mut tries = 0;
    loop {
        match try_commit_locked(pool, left, now).await {
            Err(StoreError::Database(err)) if is_transient(&err) && tries < RETRIES => {
                tries += 1;
                metrics::counter!("leaky_ledger_retries_total").increment(1);
            }
            result => return result,
        }
    }
}

/// One try of [`commit_locked`].
async fn try_commit_locked(pool: &Pool, left: &[(&Debit, &str)], now: i64) -> Result<Vec<Committed>, StoreError> {
    let debits: Vec<&Debit> = left.iter().map(|(d, _)| *d).collect();
    let mut tx = crate::database::begin(pool).await?;
    let (granted, decisions) = arbitrate(&mut tx, &debits, Backend::Postgres, now).await?;
    let mut writes = Writes::Each { conn: &mut tx, backend: Backend::Postgres };
    insert_ledger(&mut writes, &granted, now).await?;
    let (events, payloads): (Vec<&Event>, Vec<String>) = left
        .iter()
        .zip(&decisions)
        .filter(|(_, decision)| matches!(decision, Committed::Spent { .. }))
        .map(|((d, payload), _)| (&d.event, (*payload).to_string()))
        .unzip();
    insert_events(&mut writes, &events, &payloads, now).await?;
    tx.commit().await?;
    Ok(decisions)
}
