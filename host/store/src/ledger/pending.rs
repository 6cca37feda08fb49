//! Spend the ledger holds that the `quotas` table does not show yet.
//!
//! On a SQLite database only this process writes ([`Arbiter::Caller`]), a group commit writes
//! its debits' ledger rows and events but not their quota counters: the writer folds each
//! commit's [`Tallies`] in here and writes them back once per interval, inside that interval's
//! last commit, together with the highest ledger `seq` the counters now include
//! (`quota_writeback.through_seq`, in the same transaction). Rewriting a few hundred scattered
//! `quotas` pages in every commit cost about an eighth of the service's CPU and a third of what
//! it wrote to disk.
//!
//! The ledger rows are the record and the counters a view of it: each consume row carries what
//! its write-back needs (cost, periods, a first spender's limit), and before the writer starts,
//! the consume rows after `through_seq` are written back ([`super::replay`]), so a crash between
//! write-backs loses nothing.
//!
//! While the process runs, whatever reads a counter from the database reads it through
//! [`PendingSpend::read`], which adds what is pending. A write-back moves spend from here to the
//! table in one commit; write-backs are counted, odd while one runs, and a reading that
//! overlapped one is taken again, so no reading counts a debit twice or misses it.
//!
//! [`Arbiter::Caller`]: super::Arbiter::Caller

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::tally::Tallies;
use crate::StoreError;

/// How long a reading waits before it tries again while a write-back commits.
const WRITEBACK_POLL: Duration = Duration::from_millis(1);

/// Spend committed to the ledger and not yet written back to the quota counters.
#[derive(Debug, Default)]
pub struct PendingSpend {
    tallies: Mutex<Tallies>,
    /// Write-backs begun and ended: odd while one commits.
    writebacks: AtomicU64,
}

impl PendingSpend {
    fn tallies(&self) -> MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds in the tallies of a commit that did not write them back.
    pub(crate) fn add(&self, committed: Tallies) {
        let mut tallies = self.tallies();
        tallies.merge(committed);
        metrics::gauge!("leaky_ledger_pending_quota_rows").set(tallies.rows() as f64);
    }

    /// How many quota rows have spend pending.
    pub(crate) fn rows(&self) -> usize {
        self.tallies().rows()
    }

    /// Starts a write-back: what is pending, with `committing` (the tallies of the commit that
    /// writes it back) folded in after it. Readings taken from now until [`Self::end_writeback`]
    /// are taken again.
    pub(crate) fn begin_writeback(&self, committing: Tallies) -> Tallies {
        self.writebacks.fetch_add(1, Ordering::AcqRel);
        let mut all = self.tallies().clone();
        all.merge(committing);
        all
    }

    /// Ends a write-back; when it committed, what it wrote is no longer pending. Only the ledger
    /// writer adds spend, and it waited for the commit, so nothing was added meanwhile.
    pub(crate) fn end_writeback(&self, committed: bool) {
        if committed {
            *self.tallies() = Tallies::default();
            metrics::gauge!("leaky_ledger_pending_quota_rows").set(0.0);
        }
        self.writebacks.fetch_add(1, Ordering::AcqRel);
    }

    /// What `read` takes from the database, with the pending spend added by `overlay`: taken
    /// again until no write-back overlapped it.
    pub(crate) async fn read<T, F, Fut>(&self, read: F, overlay: impl Fn(&Tallies, T) -> T) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        loop {
            let before = self.writebacks.load(Ordering::Acquire);
            if before % 2 == 1 {
                tokio::time::sleep(WRITEBACK_POLL).await;
                continue;
            }
            let stored = read().await?;
            let read = overlay(&self.tallies(), stored);
            if self.writebacks.load(Ordering::Acquire) == before {
                return Ok(read);
            }
        }
    }
}
