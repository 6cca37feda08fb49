//! What the ledger writer tells the outbox relay after each commit.
//!
//! Always a wake-up. On SQLite, where this process is the database's only writer and the outbox
//! rows of one transaction get consecutive `seq`s, also the events a group commit just wrote
//! (as a script: [`crate::ledger`]), with those `seq`s: the relay publishes them as they are, without reading the rows back and parsing
//! their JSON. The outbox stays the record. Whenever the handed events do not continue exactly
//! where the relay's cursor stands (another transaction's event committed in between, a batch
//! dropped because the relay fell behind, a restart), the relay reads the outbox instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::events::Event;

/// Committed batches kept for the relay at most; when it falls further behind, the oldest are
/// dropped and it reads them from the outbox.
const KEPT: usize = 64;
/// Most events handed out at once (consecutive batches are joined up to it).
const MAX_HANDED: usize = 4096;

/// The events one transaction wrote to the outbox, in `seq` order.
#[derive(Debug)]
pub struct CommittedEvents {
    /// The `seq` of the first.
    pub first_seq: i64,
    /// The `seq` of the last.
    pub last_seq: i64,
    /// The events, `last_seq - first_seq + 1` of them.
    pub events: Vec<Event>,
}

/// The ledger writer's feed to the outbox relay. Shared between the two.
#[derive(Default)]
pub struct CommitFeed {
    wake: Notify,
    handed: Mutex<VecDeque<CommittedEvents>>,
    taken: AtomicU64,
}

impl CommitFeed {
    /// An empty feed.
    pub fn new() -> Self {
        Self::default()
    }

    /// After a commit: wakes the relay, handing it the events committed when they are known
    /// with their `seq`s.
    pub(crate) fn committed(&self, events: Option<CommittedEvents>) {
        if let Some(batch) = events.filter(|b| !b.events.is_empty()) {
            let mut handed = self.handed();
            if handed.len() == KEPT {
                handed.pop_front();
                metrics::counter!("leaky_outbox_handoff_dropped_total").increment(1);
            }
            handed.push_back(batch);
        }
        self.wake.notify_waiters();
    }

    /// Resolves at the next commit after it is created.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// The events handed over that continue right after `cursor` (the last `seq` published):
    /// the batch that starts there and those that follow it without a gap, joined (up to
    /// [`MAX_HANDED`] events), so a relay that fell a few commits behind catches up in one
    /// round. Batches the cursor has passed are dropped.
    pub(crate) fn next_after(&self, cursor: i64) -> Option<CommittedEvents> {
        let mut handed = self.handed();
        while handed.front().is_some_and(|b| b.last_seq <= cursor) {
            handed.pop_front();
        }
        if handed.front().is_none_or(|b| b.first_seq != cursor + 1) {
            return None;
        }
        let mut next = handed.pop_front()?;
        while let Some(following) = handed.front()
            && following.first_seq == next.last_seq + 1
            && next.events.len() + following.events.len() <= MAX_HANDED
        {
            let following = handed.pop_front()?;
            next.last_seq = following.last_seq;
            next.events.extend(following.events);
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(next)
    }

    /// How many handed batches the relay has published without reading the outbox.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    fn handed(&self) -> MutexGuard<'_, VecDeque<CommittedEvents>> {
        self.handed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use uuid::Uuid;

    fn batch(first_seq: i64, last_seq: i64) -> CommittedEvents {
        let event = |_| Event {
            id: Uuid::now_v7(),
            outcome: Outcome::Allowed,
            user_id: Uuid::nil(),
            org_id: None,
            provider: "openai".into(),
            model: None,
            tokens: 1,
            occurred_at: 0,
        };
        CommittedEvents { first_seq, last_seq, events: (first_seq..=last_seq).map(event).collect() }
    }

    #[test]
    fn only_a_batch_that_continues_the_cursor_is_handed_out() {
        let feed = CommitFeed::new();
        feed.committed(Some(batch(1, 3)));
        feed.committed(Some(batch(5, 6)));
        let first = feed.next_after(0).unwrap();
        assert_eq!((first.first_seq, first.last_seq, first.events.len()), (1, 3, 3));
        assert!(feed.next_after(3).is_none(), "seq 4 was committed by someone else: read the outbox");
        assert_eq!(feed.handed().len(), 1, "the later batch waits");
        assert!(feed.next_after(6).is_none(), "a batch the cursor passed is dropped");
        assert!(feed.handed().is_empty());
        assert_eq!(feed.taken(), 1);
    }

    #[test]
    fn batches_without_a_gap_are_handed_out_together() {
        let feed = CommitFeed::new();
        feed.committed(Some(batch(1, 3)));
        feed.committed(Some(batch(4, 4)));
        feed.committed(Some(batch(5, 9)));
        feed.committed(Some(batch(11, 12)));
        let joined = feed.next_after(0).unwrap();
        assert_eq!((joined.first_seq, joined.last_seq, joined.events.len()), (1, 9, 9));
        assert!(feed.next_after(9).is_none(), "seq 10 is missing");
        feed.committed(Some(batch(13, 13 + MAX_HANDED as i64 - 1)));
        let next = feed.next_after(10).unwrap();
        assert_eq!((next.last_seq, next.events.len()), (12, 2), "not joined past the most at once");
        assert_eq!(feed.next_after(12).map(|b| b.events.len()), Some(MAX_HANDED), "one batch may be as big as it is");
        assert_eq!(feed.taken(), 3);
    }

    #[test]
    fn a_relay_that_falls_behind_keeps_only_the_latest_batches() {
        let feed = CommitFeed::new();
        for i in 0..(KEPT as i64 + 10) {
            feed.committed(Some(batch(2 * i + 1, 2 * i + 2)));
        }
        assert_eq!(feed.handed().len(), KEPT);
        assert!(feed.next_after(0).is_none(), "the first batches were dropped: read the outbox");
        feed.committed(None);
        feed.committed(Some(CommittedEvents { first_seq: 1000, last_seq: 999, events: Vec::new() }));
        assert_eq!(feed.handed().len(), KEPT, "nothing to hand is not kept");
    }
}
