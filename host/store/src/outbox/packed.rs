//! A group commit's events in one outbox row (PostgreSQL, migration 0009): `events` of them in
//! `payload`, one line each, `event id \t topic \t key \t JSON`, lines joined by `\n`.
//!
//! The separators cannot occur inside a field: ids are UUIDs, topics are the service's own
//! names, keys are user ids, and compact JSON writes a tab or a newline inside a string as an
//! escape (`\t`, `\n`), never as the character itself.
//!
//! One row a commit instead of a row an event spares PostgreSQL a heap tuple, a primary-key
//! entry and most of the WAL per event, and spares the relay and the pruner a row each; the
//! driver sends the lines as one text parameter, where a row an event needed each column as an
//! array literal that both sides had to escape and parse.

use std::fmt::Write as _;

use crate::StoreError;
use crate::bus::StoredEvent;
use crate::events::Event;

/// Separates a line's fields.
const FIELD: char = '\t';
/// Separates lines.
pub(crate) const LINE: char = '\n';

/// Appends `event`'s line, with its JSON `payload`, to `lines`.
pub(crate) fn push_line(lines: &mut String, event: &Event, payload: &str) {
    if !lines.is_empty() {
        lines.push(LINE);
    }
    let start = lines.len();
    // Written in place, with no string of its own for either id (writing to a `String` cannot
    // fail).
    let _ = write!(lines, "{}{FIELD}{}{FIELD}{}{FIELD}", event.id, event.topic(), event.user_id);
    lines.push_str(payload);
    debug_assert!(!lines[start..].contains(LINE), "a payload held a newline");
}

/// The events of a packed row, in order; `expected` is the row's `events`.
pub(crate) fn unpack(lines: &str, expected: i64, into: &mut Vec<StoredEvent>) -> Result<(), StoreError> {
    let before = into.len();
    for line in lines.split(LINE) {
        let mut fields = line.splitn(4, FIELD);
        let (Some(id), Some(topic), Some(key), Some(payload)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(StoreError::Corrupt(format!("a packed outbox line has fewer than four fields: {line:?}")));
        };
        into.push(StoredEvent {
            id: id.parse().map_err(|e| StoreError::Corrupt(format!("outbox event id {id:?}: {e}")))?,
            topic: topic.to_string(),
            key: key.to_string(),
            payload: payload.to_string(),
        });
    }
    let found = into.len() - before;
    if i64::try_from(found).ok() != Some(expected) {
        return Err(StoreError::Corrupt(format!("a packed outbox row says {expected} events and holds {found}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::events::Outcome;

    fn event(provider: &str, model: Option<&str>, outcome: Outcome) -> Event {
        Event {
            id: Uuid::now_v7(),
            outcome,
            user_id: Uuid::now_v7(),
            org_id: None,
            provider: provider.into(),
            model: model.map(String::from),
            tokens: 3,
            occurred_at: 1,
        }
    }

    #[test]
    fn events_come_back_as_they_went_in_whatever_their_text() {
        let events = [
            event("openai", None, Outcome::Allowed),
            event("tab\there, newline\nthere", Some("cr\r back\\slash \"quote\""), Outcome::RateLimited),
            event("", Some(""), Outcome::Purchased),
        ];
        let mut lines = String::new();
        for e in &events {
            push_line(&mut lines, e, &serde_json::to_string(e).unwrap());
        }
        let mut stored = Vec::new();
        unpack(&lines, 3, &mut stored).unwrap();
        let expected: Vec<StoredEvent> = events.iter().map(|e| StoredEvent::of(e).unwrap()).collect();
        assert_eq!(stored, expected);
        let back: Vec<Event> = stored.iter().map(|s| serde_json::from_str(&s.payload).unwrap()).collect();
        assert_eq!(back, events);
    }

    #[test]
    fn a_row_whose_count_or_lines_do_not_agree_is_refused() {
        let e = event("openai", None, Outcome::Allowed);
        let mut lines = String::new();
        push_line(&mut lines, &e, &serde_json::to_string(&e).unwrap());
        assert!(matches!(unpack(&lines, 2, &mut Vec::new()), Err(StoreError::Corrupt(_))));
        assert!(matches!(unpack("not\ta line", 1, &mut Vec::new()), Err(StoreError::Corrupt(_))));
    }
}
